//! `app-side-shim`: parse the command line, set up logging, run until SIGINT or SIGTERM.

use app_side_shim::cli::{Cli, Command};
use clap::Parser as _;

/// mimalloc: glibc's allocator took a seventh of the relay's CPU when opening tunnels
/// (malloc_consolidate, issue 16's profile).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let run = matches!(cli.command, Command::Run(_));
    // tcpping prints its answer only, unless a log filter is asked for.
    let filter = cli.log.clone().or_else(|| run.then(|| "info".to_owned()));
    if let Some(filter) = filter
        && let Err(e) = hc_process::init_logging(&filter, cli.log_format)
    {
        eprintln!("error: --log: {e}");
        return std::process::ExitCode::from(2);
    }
    if run {
        hc_process::raise_fd_limit();
    }
    match app_side_shim::cli::execute(cli, hc_process::shutdown_signal()).await {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
