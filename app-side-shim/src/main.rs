//! `app-side-shim`: parse the command line, set up logging, run until SIGINT or SIGTERM.

use app_side_shim::cli::Cli;
use clap::Parser as _;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Err(e) = hc_process::init_logging(&cli.log) {
        eprintln!("error: {e}");
        return std::process::ExitCode::from(2);
    }
    hc_process::raise_fd_limit();
    match app_side_shim::cli::execute(cli, hc_process::shutdown_signal()).await {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
