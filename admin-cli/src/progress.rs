//! Progress on stderr for the long steps of `apply`, `restore` and `rollback`: the one
//! transaction that writes the config, and (with `--wait`) the data planes taking it up.
//! Drawn only when stderr is a terminal (indicatif hides itself otherwise), so pipes and CI logs
//! get the plain lines the commands print anyway.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// A spinner with `message` while a step of unknown length runs.
pub fn spinner(message: String) -> ProgressBar {
    let bar = ProgressBar::new_spinner().with_message(message);
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// A bar over `len` items (data planes), `message` before it.
pub fn bar(len: u64, message: String) -> ProgressBar {
    let bar = ProgressBar::new(len).with_message(message);
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} ({elapsed})")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}
