use clap::Parser;
use postern_control_plane::config::Cli;
use postern_data_plane::telemetry::run_binary;

fn main() -> std::process::ExitCode {
    run_binary(
        "control-plane",
        Cli::parse().resolve(),
        |c| c.json_logs,
        postern_control_plane::server::run,
    )
}
