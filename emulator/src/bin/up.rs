//! `up`: the whole chain on defaults, in one process: the relay emulator (TLS, state and CA
//! in the same data directory as `relay-server`), a Hybrid Connection Manager serving one
//! hybrid connection whose `userMetadata` names your endpoint, and the app-side forwarder on a
//! local port. Connect to the printed address and your bytes go
//! client -> shim -> relay -> hcm -> endpoint.
//!
//! `cargo run --release --bin up -- --endpoint localhost:6379` prints
//! `connect to 127.0.0.1:16379`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use app_side_shim::{HybridConnection, Target};
use clap::Parser;
use hc_protocol::metadata::Endpoint;
use relay_server::{Relay, RelayOptions};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const HELP_EXAMPLES: &str = "\
Examples:
  up --endpoint localhost:6379                  then: redis-cli -p 16379
  up --endpoint db.internal:5432 --listen 127.0.0.1:15432

Exit status: 0 after SIGINT or SIGTERM; 1 it could not start (the error says why); 2 a bad
command line.";

/// Relay + Hybrid Connection Manager + app-side forwarder, tunnelling a local port to an endpoint.
#[derive(Debug, Parser)]
#[command(name = "up", version, after_help = HELP_EXAMPLES)]
struct Args {
    /// The endpoint to reach, host:port (what App Service keeps in the hybrid connection's userMetadata).
    #[arg(long)]
    endpoint: String,
    /// Where apps connect [default: 127.0.0.1 on the endpoint's port + 10000, or any free port].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Where the relay listens (TLS).
    #[arg(long, default_value = "127.0.0.1:0")]
    relay_listen: SocketAddr,
    /// Hybrid connection to create or reuse in the default namespace.
    #[arg(long, default_value = "sample")]
    hybrid_connection: String,
    /// Data directory (shared with relay-server) [default: $XDG_DATA_HOME/hc-emulator or ~/.local/share/hc-emulator].
    #[arg(long, env = "HC_RELAY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Log filter.
    #[arg(long, env = "RUST_LOG", default_value = "warn")]
    log: String,
    /// Log lines as `text` or `json` (one JSON object per line).
    #[arg(long, env = "LOG_FORMAT", default_value = "text", value_parser = clap::value_parser!(hc_process::observe::LogFormat))]
    log_format: hc_process::observe::LogFormat,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    hc_process::exit_status(run(Args::parse()).await)
}

async fn run(args: Args) -> anyhow::Result<()> {
    hc_process::init_logging(&args.log, args.log_format).map_err(anyhow::Error::msg)?;
    hc_process::raise_fd_limit();
    let endpoint = Endpoint::parse(&args.endpoint)
        .with_context(|| format!("--endpoint '{}'", args.endpoint))?;
    let data = args
        .data_dir
        .clone()
        .unwrap_or_else(|| hc_process::default_data_dir("hc-emulator"));
    std::fs::create_dir_all(&data).with_context(|| format!("cannot create {}", data.display()))?;
    let cancel = CancellationToken::new();
    let stop = hc_process::shutdown_signal();

    let (relay, relay_addr) = start_relay(&args, &data, &endpoint, cancel.clone()).await?;
    let authority = format!("localhost:{}", relay_addr.port());
    let ca = data.join(relay_server::CA_FILE);
    let hcm_dir = data.join("up-hcm");
    let hcm = start_hcm(
        &relay,
        &args.hybrid_connection,
        &authority,
        &ca,
        &hcm_dir,
        cancel.clone(),
    )?;
    wait_for_listener(&relay, &args.hybrid_connection, &hcm_dir).await?;
    let (listen, tracker) =
        start_shim(&relay, &args, &endpoint, &authority, &ca, cancel.clone()).await?;

    println!("Relay        wss://{authority}  (CA {})", ca.display());
    println!(
        "HCM          serving hybrid connection '{}' -> {endpoint}",
        args.hybrid_connection
    );
    if let Some(warning) = endpoint_warning(&endpoint).await {
        println!("             warning: {warning}");
    }
    println!("Tunnel       connect to {listen}");
    println!("Ready. Ctrl-C stops everything.");
    stop.await;
    cancel.cancel();
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
    let _ = hcm.await;
    Ok(())
}

async fn start_relay(
    args: &Args,
    data: &std::path::Path,
    endpoint: &Endpoint,
    cancel: CancellationToken,
) -> anyhow::Result<(Relay, SocketAddr)> {
    let relay = Relay::open(data, None, false, RelayOptions::default())?;
    relay.put_hybrid_connection(
        "default",
        &args.hybrid_connection,
        true,
        Some(endpoint.to_user_metadata()),
    )?;
    let listener = TcpListener::bind(args.relay_listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.relay_listen))?;
    let addr = listener.local_addr()?;
    // So `relay-server fault add ...` finds this relay through the shared data directory.
    relay_server::fault::write_url_file(data, addr, true)
        .with_context(|| format!("cannot write the relay's URL into {}", data.display()))?;
    let serving = relay.clone();
    tokio::spawn(async move {
        serving
            .serve(listener, async move { cancel.cancelled().await })
            .await
    });
    Ok((relay, addr))
}

fn start_hcm(
    relay: &Relay,
    hc: &str,
    authority: &str,
    ca: &std::path::Path,
    dir: &std::path::Path,
    cancel: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<()>>> {
    let listen = relay
        .connection_string(
            "default",
            Some(hc),
            relay_server::model::LISTENER_RULE,
            authority,
        )?
        .expose();
    let mut config = hcm::config::Config::default();
    config.connections.push(hcm::config::Entry::new(
        &listen,
        None,
        1,
        Some(ca.to_owned()),
    )?);
    config.save(dir)?;
    let options = hcm::service::ServiceOptions {
        data_dir: dir.to_owned(),
        worker: hcm::worker::WorkerOptions {
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_secs(5),
            ..Default::default()
        },
        grace: Duration::from_secs(5),
        reload_interval: Duration::from_millis(500),
        exit_on_failure: None,
        metrics_listen: None,
    };
    Ok(tokio::spawn(hcm::service::run(options, async move {
        cancel.cancelled().await
    })))
}

async fn wait_for_listener(
    relay: &Relay,
    hc: &str,
    hcm_dir: &std::path::Path,
) -> anyhow::Result<()> {
    for _ in 0..500 {
        if relay.listener_count("default", hc) > 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let why = hcm::status::StatusFile::read_live(hcm_dir)
        .and_then(|s| s.connections.values().find_map(|c| c.last_error.clone()))
        .unwrap_or_default();
    bail!("the Hybrid Connection Manager did not connect within 10 s: {why}")
}

/// A warning when the endpoint does not accept a TCP connection now.
async fn endpoint_warning(endpoint: &Endpoint) -> Option<String> {
    let attempt = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect((endpoint.host.as_str(), endpoint.port)),
    )
    .await;
    match attempt {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(format!(
            "{endpoint} is not answering ({e}); tunnels are refused until it does"
        )),
        Err(_) => Some(format!(
            "{endpoint} did not answer within 2 s; tunnels are refused until it does"
        )),
    }
}

async fn start_shim(
    relay: &Relay,
    args: &Args,
    endpoint: &Endpoint,
    authority: &str,
    ca: &std::path::Path,
    cancel: CancellationToken,
) -> anyhow::Result<(SocketAddr, TaskTracker)> {
    let send = relay
        .connection_string(
            "default",
            Some(&args.hybrid_connection),
            relay_server::model::SENDER_RULE,
            authority,
        )?
        .expose();
    let tls = hc_client::tls::client_config(Some(ca))?;
    let target = Arc::new(Target {
        hostname: endpoint.host.clone(),
        port: endpoint.port,
        hc: HybridConnection::from_connection_string(&send, tls)?,
    });
    let preferred = args.listen.unwrap_or_else(|| {
        SocketAddr::from((
            [127, 0, 0, 1],
            endpoint.port.checked_add(10_000).unwrap_or(0),
        ))
    });
    let listener = match TcpListener::bind(preferred).await {
        Ok(l) => l,
        Err(_) if args.listen.is_none() => TcpListener::bind("127.0.0.1:0").await?,
        Err(e) => return Err(e).with_context(|| format!("cannot listen on {preferred}")),
    };
    let addr = listener.local_addr()?;
    let tracker = TaskTracker::new();
    tokio::spawn(app_side_shim::forward::serve(
        listener,
        target,
        Default::default(),
        tracker.clone(),
        cancel,
    ));
    Ok((addr, tracker))
}
