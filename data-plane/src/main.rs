use clap::Parser;
use postern_data_plane::config::Cli;
use postern_data_plane::telemetry::run_binary;

fn main() -> std::process::ExitCode {
    run_binary(
        "data-plane",
        Cli::parse().resolve(),
        |c| c.json_logs,
        postern_data_plane::run,
    )
}
