//! `hcm`: parse the command line, set up logging, run the verb until SIGINT or SIGTERM.

use clap::Parser as _;
use hcm::cli::{Cli, Command};

/// mimalloc: glibc's allocator took a seventh of the relay's CPU when opening tunnels
/// (malloc_consolidate, issue 16's profile).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let run = matches!(cli.command, Command::Run(_));
    // One-shot verbs print their answer only, unless a log filter is asked for.
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
    hc_process::exit_status(hcm::cli::execute(cli, hc_process::shutdown_signal()).await)
}
