//! `hcm`: parse the command line, set up logging, run the verb until SIGINT or SIGTERM.

use clap::Parser as _;
use hcm::cli::{Cli, Command};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Run(_)) {
        if let Err(e) = hc_process::init_logging(&cli.log) {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
        hc_process::raise_fd_limit();
    }
    match hcm::cli::execute(cli, hc_process::shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
