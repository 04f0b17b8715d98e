//! The `app-side-shim` command line: `run` (explicit forwards, hostname mode, proxy mode, in
//! any combination) and `tcpping`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::app::{AppOptions, AppSource};
use crate::config::{Plan, ShimConfig, Target};
use crate::hosts::HostsBlock;
use crate::proxy::{self, Limits, Router};
use crate::sender::HybridConnection;
use crate::{forward, tcpping};
use hc_client::warm::WarmOptions;

const HELP_EXAMPLES: &str = "\
Examples:
  app-side-shim -c shim.json run --forward 127.0.0.1:15432=db.corp.example:5432
  app-side-shim -c shim.json run --socks5 127.0.0.1:1080 --http-proxy 127.0.0.1:3128
  sudo app-side-shim -c shim.json run --hostnames
  app-side-shim -c shim.json tcpping db.corp.example:5432 -n 3

Exit status (as ping's): 0 done (tcpping: every tunnel opened); 1 tcpping: a tunnel failed;
2 an error: a bad command line or configuration, or `run` could not start.";

/// What App Service does for an app: make programs' TCP connections to hybrid connection
/// endpoints flow through Azure Relay (or the emulator).
#[derive(Debug, Parser)]
#[command(name = "app-side-shim", version, after_help = HELP_EXAMPLES)]
pub struct Cli {
    /// Configuration file listing the app's hybrid connections (see the README).
    #[arg(long, short, global = true, env = "SHIM_CONFIG")]
    pub config: Option<PathBuf>,
    /// Extra CA certificate to trust for the relay (the emulator's ca.pem).
    #[arg(long, global = true, env = "SHIM_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Log filter, e.g. `info` or `app_side_shim=debug` [default: `info` for `run`; `tcpping`
    /// logs nothing unless given one].
    #[arg(long, global = true, env = "RUST_LOG")]
    pub log: Option<String>,
    /// Log lines as `text` or `json` (one JSON object per line, with every field).
    #[arg(long, global = true, env = "LOG_FORMAT", default_value = "text", value_parser = clap::value_parser!(hc_process::observe::LogFormat))]
    pub log_format: hc_process::observe::LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve local listeners and proxies until SIGINT or SIGTERM.
    Run(Box<RunArgs>),
    /// Open real tunnels to HOST:PORT and report the time, or which hop failed.
    Tcpping {
        /// A configured endpoint, host:port.
        endpoint: String,
        /// How many tunnels to open.
        #[arg(short = 'n', long, default_value_t = 4)]
        count: u32,
        /// Seconds between attempts.
        #[arg(long, default_value_t = 1.0, value_parser = hc_process::seconds(0.0, 3600.0))]
        interval: f64,
    },
}

/// Options of `run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// LISTEN=TARGET: accept on LISTEN (e.g. 127.0.0.1:15432) and tunnel to TARGET, a
    /// configured endpoint host:port, a configured relay name, or a connection string with
    /// EntityPath. Repeatable.
    #[arg(long = "forward", value_name = "LISTEN=TARGET")]
    pub forwards: Vec<String>,
    /// Hostname mode: every configured endpoint host gets a loopback address (127.77.x.y)
    /// listening on the endpoint's port, and hosts-file entries map the names to them.
    #[arg(long)]
    pub hostnames: bool,
    /// Serve /healthz, /readyz (200 once the shim's listeners are up and it has a hybrid
    /// connection to route to; `?wait=SECONDS` holds the answer until then) and /metrics
    /// (Prometheus) on this address, e.g. 127.0.0.1:9101 (no authentication: keep it on
    /// loopback).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// File to write hostname mode's entries into (a marked block, removed on exit).
    #[arg(long, value_name = "FILE")]
    pub hosts_file: Option<PathBuf>,
    /// Write hostname mode's entries into /etc/hosts.
    #[arg(long)]
    pub system_hosts: bool,
    /// Serve a SOCKS5 proxy on this address.
    #[arg(long, value_name = "ADDR")]
    pub socks5: Option<SocketAddr>,
    /// Serve an HTTP CONNECT proxy on this address.
    #[arg(long, value_name = "ADDR")]
    pub http_proxy: Option<SocketAddr>,
    /// Proxies connect requests that match no endpoint directly instead of refusing them.
    #[arg(long)]
    pub allow_direct: bool,
    /// Enforce an App Service plan's hybrid connection limit.
    #[arg(long, value_enum)]
    pub plan: Option<Plan>,
    /// Seconds live tunnels may run on after a stop signal.
    #[arg(long, default_value_t = 10.0, value_parser = hc_process::seconds(0.0, 86_400.0))]
    pub grace: f64,
    /// Connections held at once over every local listener and proxy; more are closed at once.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections: u64,
    /// Connections to the relay kept open ahead of need for each hybrid connection in use,
    /// so a new tunnel pays only its WebSocket upgrade (0: dial for every tunnel).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(0..=64))]
    pub warm_connections: u16,
    /// Seconds a warm connection waits before it is replaced; keep it below the relay's
    /// limit on a connection that sends no request (the emulator's --handshake-timeout).
    /// Connections are kept warm for six times this after the last tunnel.
    #[arg(long, default_value_t = 5.0, value_parser = hc_process::seconds(0.1, 600.0))]
    pub warm_max_idle: f64,
    /// Seconds a SOCKS5 or HTTP CONNECT client has to say where it wants to go.
    #[arg(long, default_value_t = 10.0, value_parser = hc_process::seconds(0.1, 3600.0))]
    pub handshake_timeout: f64,
    /// Take this App Service app's hybrid connections from its Microsoft.Web resources
    /// through the ARM endpoint, as App Service does, and pick up changes while running
    /// (needs --arm-endpoint, --subscription, --resource-group and a token).
    #[arg(long, value_name = "NAME", requires_all = ["arm_endpoint", "subscription", "resource_group"])]
    pub app: Option<String>,
    /// The app's deployment slot.
    #[arg(long, requires = "app")]
    pub slot: Option<String>,
    /// ARM endpoint for --app, e.g. `https://localhost:9444/` (the emulator's) or
    /// `https://management.azure.com/`.
    #[arg(long, env = "SHIM_ARM_ENDPOINT", value_name = "URL")]
    pub arm_endpoint: Option<String>,
    /// Subscription of the app.
    #[arg(long, env = "AZURE_SUBSCRIPTION_ID", value_name = "ID")]
    pub subscription: Option<String>,
    /// Resource group of the app.
    #[arg(long, env = "SHIM_RESOURCE_GROUP", value_name = "NAME")]
    pub resource_group: Option<String>,
    /// Bearer token for --app; without it the managed-identity endpoint in IDENTITY_ENDPOINT
    /// and IDENTITY_HEADER is asked, as on App Service.
    #[arg(
        long,
        env = "SHIM_ARM_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub arm_token: Option<hc_process::Secret>,
    /// Seconds between two reads of the app's hybrid connections.
    #[arg(long, default_value_t = 5.0, value_parser = hc_process::seconds(0.5, 3600.0))]
    pub app_refresh: f64,
}

fn load(cli: &Cli) -> anyhow::Result<ShimConfig> {
    match &cli.config {
        Some(path) => ShimConfig::load(path),
        None => Ok(ShimConfig::default()),
    }
}

/// Runs one verb.
pub async fn execute(cli: Cli, shutdown: impl Future<Output = ()>) -> anyhow::Result<bool> {
    let config = load(&cli)?;
    match &cli.command {
        Command::Tcpping {
            endpoint,
            count,
            interval,
        } => {
            let targets = config.targets(None, cli.ca_file.as_deref())?;
            let target = find(&targets, endpoint)?;
            Ok(tcpping::run(
                &target,
                *count,
                Duration::try_from_secs_f64(*interval).unwrap_or_default(),
            )
            .await)
        }
        Command::Run(args) => {
            let targets = config.targets(args.plan, cli.ca_file.as_deref())?;
            run(&cli, args, targets, shutdown).await?;
            Ok(true)
        }
    }
}

/// The configured target for `host:port` or a relay name.
fn find(targets: &[Arc<Target>], what: &str) -> anyhow::Result<Arc<Target>> {
    let what = what.to_ascii_lowercase();
    let found: Vec<&Arc<Target>> = targets
        .iter()
        .filter(|t| t.endpoint() == what || t.hc.path().eq_ignore_ascii_case(&what))
        .collect();
    match found.as_slice() {
        [t] => Ok((*t).clone()),
        [] => {
            let known: Vec<String> = targets.iter().map(|t| t.endpoint()).collect();
            bail!(
                "'{what}' is not a configured endpoint or relay name (configured: {})",
                if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                }
            )
        }
        _ => bail!("'{what}' names several hybrid connections; use host:port"),
    }
}

impl RunArgs {
    /// The warm-connection options of these flags.
    fn warm(&self) -> WarmOptions {
        WarmOptions::new(
            usize::from(self.warm_connections),
            Duration::try_from_secs_f64(self.warm_max_idle).unwrap_or(Duration::from_secs(5)),
        )
    }
}

/// `targets`, each with its own pool of warm connections.
fn warmed(targets: Vec<Arc<Target>>, warm: WarmOptions) -> Vec<Arc<Target>> {
    targets
        .into_iter()
        .map(|t| {
            let mut t = Target::clone(&t);
            t.hc = t.hc.with_warm_connections(warm);
            Arc::new(t)
        })
        .collect()
}

fn forward_target(
    cli: &Cli,
    args: &RunArgs,
    targets: &[Arc<Target>],
    listen: SocketAddr,
    spec: &str,
) -> anyhow::Result<Arc<Target>> {
    if spec.len() > 9 && spec[..9].eq_ignore_ascii_case("endpoint=") {
        let tls = hc_client::tls::client_config(cli.ca_file.as_deref())?;
        let hc =
            HybridConnection::from_connection_string(spec, tls)?.with_warm_connections(args.warm());
        return Ok(Arc::new(Target {
            hostname: listen.ip().to_string(),
            port: listen.port(),
            hc,
        }));
    }
    find(targets, spec)
}

async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}

async fn run(
    cli: &Cli,
    args: &RunArgs,
    targets: Vec<Arc<Target>>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    if args.forwards.is_empty()
        && !args.hostnames
        && args.socks5.is_none()
        && args.http_proxy.is_none()
    {
        bail!(
            "nothing to do: give --forward LISTEN=TARGET, --hostnames, --socks5 ADDR or --http-proxy ADDR"
        );
    }
    let (tracker, cancel) = (TaskTracker::new(), CancellationToken::new());
    let source = match &args.app {
        Some(app) => Some(Arc::new(app_source(cli, args, app)?)),
        None => None,
    };
    let from_config = warmed(targets, args.warm());
    let mut targets = from_config.clone();
    if let Some(source) = &source {
        let from_app = source.fetch().await.with_context(|| {
            format!(
                "reading the hybrid connections of app '{}'",
                args.app.as_deref().unwrap_or_default()
            )
        })?;
        println!(
            "App {}: {}",
            args.app.as_deref().unwrap_or_default(),
            describe_all(&from_app)
        );
        targets.extend(warmed(from_app, args.warm()));
    }
    let router = Arc::new(Router::new(targets.clone(), args.allow_direct));
    crate::metrics::metrics().set_routes(targets.len());
    if let Some(addr) = args.metrics_listen {
        let listener = bind(addr).await?;
        println!(
            "Metrics: http://{}/metrics  (health: /healthz, /readyz)",
            listener.local_addr()?
        );
        tokio::spawn(hc_process::observe::serve(
            listener,
            Arc::new(crate::metrics::metrics()),
            cancel.clone().cancelled_owned(),
        ));
    }
    let limits = Limits::new(
        usize::try_from(args.max_connections).unwrap_or(usize::MAX),
        Duration::try_from_secs_f64(args.handshake_timeout).unwrap_or(Duration::from_secs(10)),
    );
    for spec in &args.forwards {
        let (listen, target) = spec
            .split_once('=')
            .with_context(|| format!("--forward '{spec}' is not LISTEN=TARGET"))?;
        let listen: SocketAddr = listen.parse().with_context(|| {
            format!("--forward '{listen}' is not an address such as 127.0.0.1:15432")
        })?;
        if source.is_some() && !target.to_ascii_lowercase().starts_with("endpoint=") {
            // With --app the endpoint is looked up at each connection: the app may gain it.
            let (host, port) = target
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h.to_ascii_lowercase(), p.parse::<u16>().ok()?)))
                .with_context(|| {
                    format!("--forward '{spec}': with --app the target is an endpoint host:port")
                })?;
            let listener = bind(listen).await?;
            println!(
                "Forwarding {} -> {host}:{port} through app {}",
                listener.local_addr()?,
                args.app.as_deref().unwrap_or_default()
            );
            tokio::spawn(forward::serve_routed(
                listener,
                router.clone(),
                host,
                port,
                limits.clone(),
                tracker.clone(),
                cancel.clone(),
            ));
            continue;
        }
        let target = forward_target(cli, args, &targets, listen, target)?;
        let listener = bind(listen).await?;
        println!(
            "Forwarding {} -> {} through {}",
            listener.local_addr()?,
            target.endpoint(),
            target.describe()
        );
        tokio::spawn(forward::serve(
            listener,
            target,
            limits.clone(),
            tracker.clone(),
            cancel.clone(),
        ));
    }
    let _hosts = if args.hostnames {
        Some(hostname_mode(args, &targets, &limits, &tracker, &cancel).await?)
    } else {
        None
    };
    if let Some(source) = source {
        tokio::spawn(refresh(
            source,
            router.clone(),
            from_config,
            Duration::try_from_secs_f64(args.app_refresh).unwrap_or(AppSource::DEFAULT_REFRESH),
            args.warm(),
            cancel.clone(),
        ));
    }
    for addr in [args.socks5, args.http_proxy].into_iter().flatten() {
        if args.allow_direct && !addr.ip().is_loopback() {
            warn!(%addr, "--allow-direct on a proxy bound to a non-loopback address: anyone who can reach it can use this machine to connect anywhere");
        }
    }
    if let Some(addr) = args.socks5 {
        let listener = bind(addr).await?;
        println!("SOCKS5 proxy on {}", listener.local_addr()?);
        tokio::spawn(proxy::serve_socks5(
            listener,
            router.clone(),
            limits.clone(),
            tracker.clone(),
            cancel.clone(),
        ));
    }
    if let Some(addr) = args.http_proxy {
        let listener = bind(addr).await?;
        println!("HTTP CONNECT proxy on {}", listener.local_addr()?);
        tokio::spawn(proxy::serve_http_connect(
            listener,
            router.clone(),
            limits.clone(),
            tracker.clone(),
            cancel.clone(),
        ));
    }
    crate::metrics::metrics().set_started();
    println!("Ready.");
    shutdown.await;
    cancel.cancel();
    tracker.close();
    if tokio::time::timeout(Duration::from_secs_f64(args.grace.max(0.0)), tracker.wait())
        .await
        .is_err()
    {
        warn!(
            remaining = tracker.len(),
            "grace period over; dropping live tunnels"
        );
    }
    Ok(())
}

fn app_source(cli: &Cli, args: &RunArgs, app: &str) -> anyhow::Result<AppSource> {
    let tls = hc_client::tls::client_config(cli.ca_file.as_deref())?;
    AppSource::new(
        AppOptions {
            arm_endpoint: args.arm_endpoint.clone().unwrap_or_default(),
            subscription: args.subscription.clone().unwrap_or_default(),
            resource_group: args.resource_group.clone().unwrap_or_default(),
            app: app.to_owned(),
            slot: args.slot.clone(),
            token: args.arm_token.as_ref().map(|t| t.expose().to_owned()),
        },
        tls,
    )
}

/// `host:port via namespace/relay, …`, or `none`.
fn describe_all(targets: &[Arc<Target>]) -> String {
    if targets.is_empty() {
        return "no hybrid connections".into();
    }
    targets
        .iter()
        .map(|t| format!("{} via {}", t.endpoint(), t.describe()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Reads the app's hybrid connections every `every` and swaps the router's set when they
/// changed; a failed read keeps the last set (and says so).
async fn refresh(
    source: Arc<AppSource>,
    router: Arc<Router>,
    from_config: Vec<Arc<Target>>,
    every: Duration,
    warm: WarmOptions,
    cancel: CancellationToken,
) {
    let key = |ts: &[Arc<Target>]| {
        let mut k: Vec<String> = ts
            .iter()
            .map(|t| format!("{} {}", t.endpoint(), t.describe()))
            .collect();
        k.sort();
        k
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = cancel.cancelled() => return,
        }
        match source.fetch().await {
            Ok(from_app) => {
                // A pool holds no connection until used: those of an unchanged set just go.
                let from_app = warmed(from_app, warm);
                let mut next = from_config.clone();
                next.extend(from_app.iter().cloned());
                if key(&next) != key(&router.targets()) {
                    info!(now = %describe_all(&from_app), "the app's hybrid connections changed");
                    router.replace(next);
                }
            }
            Err(e) => {
                warn!(error = %format!("{e:#}"), "cannot read the app's hybrid connections; keeping the last ones")
            }
        }
    }
}

async fn hostname_mode(
    args: &RunArgs,
    targets: &[Arc<Target>],
    limits: &Limits,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) -> anyhow::Result<HostsBlock> {
    let path = match (&args.hosts_file, args.system_hosts) {
        (Some(p), false) => p.clone(),
        (None, true) => PathBuf::from("/etc/hosts"),
        (Some(_), true) => bail!("give either --hosts-file or --system-hosts, not both"),
        (None, false) => {
            bail!("hostname mode needs --hosts-file FILE (or --system-hosts to edit /etc/hosts)")
        }
    };
    if targets.is_empty() {
        bail!("hostname mode needs hybrid connections in the configuration file");
    }
    let plan = forward::hostname_plan(targets);
    let mut entries = Vec::new();
    for (ip, target) in &plan {
        let listener = bind(SocketAddr::new(*ip, target.port)).await?;
        println!(
            "Hostname {} -> {} through {}",
            target.endpoint(),
            listener.local_addr()?,
            target.describe()
        );
        tokio::spawn(forward::serve(
            listener,
            target.clone(),
            limits.clone(),
            tracker.clone(),
            cancel.clone(),
        ));
        if !entries
            .iter()
            .any(|(_, n): &(std::net::IpAddr, String)| *n == target.hostname)
        {
            entries.push((*ip, target.hostname.clone()));
        }
    }
    let block = HostsBlock::write(&path, &entries)
        .with_context(|| format!("cannot write hosts entries to {}", path.display()))?;
    println!("Hosts entries written to {}", path.display());
    Ok(block)
}
