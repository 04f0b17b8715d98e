//! `relay-server`: the emulator binary. Parses arguments, prepares the data directory (state,
//! CA, server certificate), prints how to connect, and serves until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use relay_server::model::{LISTENER_RULE, SENDER_RULE};
use relay_server::{ArmOptions, CA_FILE, ConfigFile, Relay, RelayOptions};
use tokio::net::TcpListener;

/// Data directory name under $XDG_DATA_HOME (shared with `up`).
const DATA_DIR_NAME: &str = "hc-emulator";

const HELP_EXAMPLES: &str = "\
Examples:
  relay-server                                  TLS on 127.0.0.1:9443, namespace 'default', hybrid connection 'sample'
  relay-server --plain                          ws:// and http:// on 127.0.0.1:9080
  relay-server --config relay.json --listen 0.0.0.0:9443
                                                namespaces and hybrid connections from a file (see the README)
  relay-server fault add refuse-connects --status 503 --hc sample --duration-seconds 10
                                                make the running relay refuse connects for 10 s

Exit status: 0 after SIGINT or SIGTERM; 1 it could not start (the error says why: the
config file, the data directory, the address); 2 a bad command line.";

/// A local, offline Azure Relay Hybrid Connections emulator.
#[derive(Debug, Parser)]
#[command(
    name = "relay-server",
    version,
    after_help = HELP_EXAMPLES,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: Args,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Inject, list and clear faults in a running relay (README: "Testing your app's
    /// resilience").
    Fault(fault_cli::FaultArgs),
}

/// Serving options.
#[derive(Debug, clap::Args)]
struct Args {
    /// Address to listen on [default: 127.0.0.1:9443, or 127.0.0.1:9080 with --plain].
    #[arg(long, env = "HC_RELAY_LISTEN")]
    listen: Option<SocketAddr>,
    /// Serve plain ws:// and http:// instead of TLS (quick experiments only).
    #[arg(long)]
    plain: bool,
    /// Data directory for state.json and the certificates [default: $XDG_DATA_HOME/hc-emulator or ~/.local/share/hc-emulator].
    #[arg(long, env = "HC_RELAY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Declarative configuration file (JSON, see the README), applied at every start.
    #[arg(long, short, env = "HC_RELAY_CONFIG")]
    config: Option<PathBuf>,
    /// Seconds a sender waits for a listener to accept.
    #[arg(long, default_value_t = 30, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    rendezvous_timeout: u64,
    /// Seconds an expired listener token is tolerated before the control channel is closed.
    #[arg(long, default_value_t = 60, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(0..=86_400))]
    token_grace: u64,
    /// Connections (listeners and tunnels) allowed per namespace.
    #[arg(long, default_value_t = hc_protocol::limits::DEFAULT_MAX_CONNECTIONS_PER_NAMESPACE as u64, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    max_connections_per_namespace: u64,
    /// HTTP request mode: seconds a listener has to start its response (then 504), and the
    /// longest pause in a response body.
    #[arg(long, default_value_t = 60, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    http_timeout: u64,
    /// HTTP request mode: status when no listener is connected (404 as seen from Azure, or 502 as documented).
    #[arg(long, default_value_t = 404, value_parser = clap::value_parser!(u16).range(400..600))]
    http_no_listener_status: u16,
    /// Seconds between keep-alive pings to listeners (one that answers none of two is dropped); 0 turns them off.
    #[arg(long, default_value_t = 30, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(0..=3600))]
    listener_keepalive: u64,
    /// Seconds a new connection has to finish its TLS handshake and send a request head (idle
    /// and slow connections are closed after that).
    #[arg(long, default_value_t = 10, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=300))]
    handshake_timeout: u64,
    /// Seconds shutdown waits for connections to close.
    #[arg(long, default_value_t = 5, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(0..=3600))]
    shutdown_grace: u64,
    /// Never print keys or connection strings, even on a terminal; they are always written to
    /// connection-strings.txt (mode 0600) in the data directory.
    #[arg(long)]
    quiet_keys: bool,
    /// Address of the management endpoint (Azure Resource Manager, always HTTPS)
    /// [default: the relay's address with port + 1, or any free port when that is 0].
    #[arg(long, env = "HC_RELAY_ARM_LISTEN", value_name = "ADDR")]
    arm_listen: Option<SocketAddr>,
    /// Do not serve the management endpoint.
    #[arg(long, conflicts_with = "arm_listen")]
    no_arm: bool,
    /// Management endpoint: accept only bearer tokens it issued (signature and expiry
    /// checked) instead of any non-empty one.
    #[arg(long)]
    arm_strict_auth: bool,
    /// Management endpoint: tenant id of the tokens it issues.
    #[arg(long, default_value = relay_server::model::DEFAULT_SUBSCRIPTION, value_name = "GUID")]
    arm_tenant: String,
    /// Management endpoint: subscription it lists first (any id works in paths).
    #[arg(long, default_value = relay_server::model::DEFAULT_SUBSCRIPTION, value_name = "GUID")]
    arm_subscription: String,
    /// Management endpoint: hybrid-connection listKeys strings without `;EntityPath=` (as the
    /// REST spec's example shows them).
    #[arg(long)]
    arm_keys_without_entity_path: bool,
    /// Namespaces made through the management endpoint also answer to
    /// {name}.servicebus.windows.net, and their connection strings use it (map the name to
    /// 127.0.0.1 in /etc/hosts).
    #[arg(long)]
    azure_host_names: bool,
    /// Serve /healthz, /readyz, /metrics and the status page (/$status) to any address
    /// without credentials (for containers, where the host's requests come from a bridge
    /// address). Without it, loopback clients need none and others a token with Manage
    /// rights or a management bearer token issued by this relay.
    #[arg(long)]
    status_open: bool,
    /// Log filter, e.g. `info` or `relay_server=debug`.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    log: String,
    /// Log lines as `text` or `json` (one JSON object per line: per-tunnel records carry the
    /// TrackingId, namespace, hybrid connection, bytes, duration and outcome).
    #[arg(long, env = "LOG_FORMAT", default_value = "text", value_parser = clap::value_parser!(hc_process::observe::LogFormat))]
    log_format: hc_process::observe::LogFormat,
}

mod fault_cli;

/// mimalloc: glibc's allocator took a seventh of the relay's CPU when opening tunnels
/// (malloc_consolidate, issue 16's profile).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    hc_process::exit_status(match cli.command {
        Some(Command::Fault(args)) => fault_cli::run(args).await,
        None => run(cli.serve).await,
    })
}

async fn run(args: Args) -> anyhow::Result<()> {
    hc_process::init_logging(&args.log, args.log_format).map_err(anyhow::Error::msg)?;

    hc_process::raise_fd_limit();
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| hc_process::default_data_dir(DATA_DIR_NAME));
    let config = read_config(&args)?;
    let relay = Relay::open(&data_dir, config.as_ref(), args.plain, options(&args))?;

    let addr = args.listen.unwrap_or_else(|| {
        if args.plain {
            ([127, 0, 0, 1], 9080).into()
        } else {
            ([127, 0, 0, 1], 9443).into()
        }
    });
    let listener = TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr} (use --listen 127.0.0.1:0 for any free port)")
    })?;
    let bound = listener.local_addr()?;
    let management = if args.no_arm {
        None
    } else {
        let addr = args.arm_listen.unwrap_or_else(|| {
            let port = if bound.port() == 0 || addr.port() == 0 {
                0
            } else {
                bound.port().saturating_add(1)
            };
            SocketAddr::new(bound.ip(), port)
        });
        let arm = TcpListener::bind(addr).await.with_context(|| {
            format!("cannot listen on {addr} for the management endpoint (--arm-listen ADDR to choose, --no-arm to go without)")
        })?;
        Some(arm)
    };
    let management_addr = management
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()?;
    let stop = hc_process::shutdown_signal();
    relay_server::fault::write_url_file(&data_dir, bound, !args.plain).with_context(|| {
        format!(
            "cannot write {}",
            data_dir.join(relay_server::fault::URL_FILE).display()
        )
    })?;
    print_banner(&relay, bound, management_addr, &args, &data_dir)?;
    if let Some(arm) = management {
        let relay = relay.clone();
        tokio::spawn(async move {
            if let Err(e) = relay.serve_management(arm).await {
                tracing::error!(error = %e, "the management endpoint stopped");
            }
        });
    }
    relay.serve(listener, stop).await?;
    Ok(())
}

fn options(args: &Args) -> RelayOptions {
    RelayOptions {
        rendezvous_timeout: Duration::from_secs(args.rendezvous_timeout),
        token_grace: Duration::from_secs(args.token_grace),
        max_connections_per_namespace: usize::try_from(args.max_connections_per_namespace)
            .unwrap_or(usize::MAX),
        shutdown_grace: Duration::from_secs(args.shutdown_grace),
        handshake_timeout: Duration::from_secs(args.handshake_timeout),
        http_response_timeout: Duration::from_secs(args.http_timeout),
        http_no_listener_status: args.http_no_listener_status,
        listener_keepalive: (args.listener_keepalive > 0)
            .then(|| Duration::from_secs(args.listener_keepalive)),
        arm: ArmOptions {
            tenant: args.arm_tenant.clone(),
            subscription: args.arm_subscription.clone(),
            strict_auth: args.arm_strict_auth,
            entity_path_in_keys: !args.arm_keys_without_entity_path,
            azure_host_names: args.azure_host_names,
        },
        status_open: args.status_open,
        ..RelayOptions::default()
    }
}

/// The declarative config file, if one was named.
fn read_config(args: &Args) -> anyhow::Result<Option<ConfigFile>> {
    let Some(path) = &args.config else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    ConfigFile::parse(&text)
        .map(Some)
        .with_context(|| format!("config file {} is invalid", path.display()))
}

/// File in the data directory holding every connection string (mode 0600).
const KEYS_FILE: &str = "connection-strings.txt";

/// How to reach every namespace: connection strings, the CA and how to trust it. Keys go to
/// the terminal only when stdout is one (and `--quiet-keys` is not given): supervisors and
/// CI systems keep what a service prints, so otherwise the banner names the 0600 file that
/// holds them instead.
fn print_banner(
    relay: &Relay,
    addr: SocketAddr,
    management: Option<SocketAddr>,
    args: &Args,
    data_dir: &std::path::Path,
) -> anyhow::Result<()> {
    use std::io::IsTerminal as _;
    let plain = args.plain;
    let (ws, http) = if plain {
        ("ws", "http")
    } else {
        ("wss", "https")
    };
    println!("Azure Relay Hybrid Connections emulator listening on {addr} ({ws}://, {http}://)");
    println!("Data directory: {}", data_dir.display());
    if !plain {
        let ca = data_dir.join(CA_FILE);
        println!("CA certificate: {}", ca.display());
        println!(
            "  Node (hyco-ws, hyco-https): export NODE_EXTRA_CA_CERTS={}",
            ca.display()
        );
        println!(
            "  OpenSSL tools and Python:   export SSL_CERT_FILE={}",
            ca.display()
        );
        println!(
            "  curl:                       curl --cacert {} ...",
            ca.display()
        );
    }
    println!(
        "Status page: {http}://localhost:{port}/$status  (health: /healthz, /readyz; Prometheus: /metrics)",
        port = addr.port()
    );
    println!(
        "Fault injection: {http}://localhost:{port}/$faults  (relay-server fault add|list|clear)",
        port = addr.port()
    );
    if let Some(arm) = management {
        println!(
            "Management (Azure Resource Manager): https://localhost:{}/  (subscription {}; az: see the README)",
            arm.port(),
            args.arm_subscription
        );
    }
    let (with_keys, without_keys) = namespaces_text(relay, addr.port(), ws);
    let keys_file = data_dir.join(KEYS_FILE);
    hc_process::write_atomically(&keys_file, with_keys.as_bytes())
        .with_context(|| format!("cannot write {}", keys_file.display()))?;
    let show_keys = std::io::stdout().is_terminal() && !args.quiet_keys;
    print!("{}", if show_keys { &with_keys } else { &without_keys });
    println!();
    println!("Connection strings: {} (mode 0600)", keys_file.display());
    println!("Ready.");
    Ok(())
}

/// The namespaces part of the banner, with and without connection strings.
fn namespaces_text(relay: &Relay, port: u16, ws: &str) -> (String, String) {
    use std::fmt::Write as _;
    let (mut with, mut without) = (String::new(), String::new());
    let model = relay.model();
    for ns in model.namespaces.values() {
        let host = if ns.default {
            format!("localhost:{port}")
        } else {
            format!("{}.localhost:{port}", ns.name.to_ascii_lowercase())
        };
        let head = format!(
            "\nNamespace {} at {ws}://{host}/$hc/{{hybrid-connection}}\n",
            ns.name
        );
        with.push_str(&head);
        without.push_str(&head);
        for rule in &ns.authorization_rules {
            if let Ok(cs) = relay.connection_string(&ns.name, None, &rule.0.name, &host) {
                let _ = writeln!(
                    with,
                    "  {} ({}): {}",
                    rule.0.name,
                    rights_text(rule.0.rights),
                    cs.expose()
                );
                let _ = writeln!(
                    without,
                    "  {} ({})",
                    rule.0.name,
                    rights_text(rule.0.rights)
                );
            }
        }
        for hc in ns.hybrid_connections.values() {
            let line = format!(
                "  Hybrid connection {}{}\n",
                hc.name,
                hc.user_metadata
                    .as_deref()
                    .map(|m| format!(" (userMetadata {m})"))
                    .unwrap_or_default()
            );
            with.push_str(&line);
            without.push_str(&line);
            for (label, rule) in [("Listen", LISTENER_RULE), ("Send", SENDER_RULE)] {
                if let Ok(cs) = relay.connection_string(&ns.name, Some(&hc.name), rule, &host) {
                    let _ = writeln!(with, "    {label:<6} {}", cs.expose());
                }
            }
        }
    }
    (with, without)
}

fn rights_text(rights: hc_protocol::Rights) -> String {
    rights
        .to_vec()
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
