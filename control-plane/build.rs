//! `sqlx::migrate!` embeds the SQL files at compile time, but cargo does not know to rebuild when
//! they change; this tells it.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
