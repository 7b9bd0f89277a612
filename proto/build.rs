//! Compiles `proto/*.proto` with protox, a pure-Rust protobuf compiler, so that building Postern
//! needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/postern/sync/v1/sync.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Resource bodies are shared by every DP stream: `Bytes` makes each copy a refcount.
        .bytes(".postern.sync.v1.Resource.body")
        // One packing of a whole snapshot goes to every DP stream, as a refcount too.
        .bytes(".postern.sync.v1.PackedSnapshot.zstd")
        .compile_fds(descriptors)?;
    Ok(())
}
