use clap::Parser;
use postern_data_plane::config::Cli;
use postern_data_plane::telemetry::run_binary;

// mimalloc: the proxy allocates small, short-lived objects per request (headers, futures);
// measured in bench/ against the system allocator. Called through `memory::Allocator`, which
// keeps the common layouts off mimalloc's aligned path.
#[global_allocator]
static ALLOCATOR: postern_data_plane::memory::Allocator = postern_data_plane::memory::Allocator;

fn main() -> std::process::ExitCode {
    postern_data_plane::memory::disable_transparent_huge_pages();
    run_binary(
        "data-plane",
        Cli::parse().resolve(),
        |c| c.json_logs,
        postern_data_plane::run,
    )
}
