use clap::Parser;
use postern_control_plane::config::Cli;
use tokio_util::sync::CancellationToken;

fn main() -> std::process::ExitCode {
    let config = match Cli::parse().resolve() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("control-plane: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    postern_data_plane::telemetry::init_logging(config.json_logs);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("control-plane: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(postern_data_plane::telemetry::cancel_on_signal(
            shutdown.clone(),
        ));
        match postern_control_plane::server::run(config, shutdown).await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("control-plane: {e:#}");
                eprintln!("control-plane: {e:#}");
                std::process::ExitCode::FAILURE
            }
        }
    })
}
