//! The `hcm` command line, modelled on Microsoft's cross-platform HCM (`add`, `list`, `show`,
//! `remove`, `version`) plus `run`, which serves every configured hybrid connection.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use hc_client::relay::RelayEndpoint;
use hc_client::token::TokenProvider;
use hc_protocol::metadata::Endpoint;
use serde_json::json;

use crate::config::{Config, Entry};
use crate::service::{self, ServiceOptions};
use crate::status::{HcStatus, StatusFile};
use crate::worker::WorkerOptions;

const HELP_EXAMPLES: &str = "\
Examples:
  hcm add 'Endpoint=sb://contoso.servicebus.windows.net/;SharedAccessKeyName=defaultListener;SharedAccessKey=…;EntityPath=db'
  hcm add - --endpoint db.internal:5432 --ca-file ~/.local/share/hc-emulator/ca.pem < listen.txt
  hcm list
  hcm run --exit-on-failure

Exit status: 0 done; 1 the verb failed (the error says why; for `run`: --exit-on-failure
gave up on a hybrid connection); 2 a bad command line.";

/// Hybrid Connection Manager: forwards the connections of Azure Relay hybrid connections to
/// TCP endpoints in this network. Connects outbound only.
#[derive(Debug, Parser)]
#[command(name = "hcm", version, after_help = HELP_EXAMPLES)]
pub struct Cli {
    /// Where connections.json and status.json live [default: $XDG_DATA_HOME/hcm or ~/.local/share/hcm].
    #[arg(long, global = true, env = "HCM_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Log filter, e.g. `info` or `hcm=debug` [default: `info` for `run`; the other verbs
    /// log nothing unless given one].
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
    /// Add (or update) a hybrid connection from its gateway connection string; '-' reads it from stdin.
    Add {
        /// `Endpoint=sb://…/;SharedAccessKeyName=…;SharedAccessKey=…;EntityPath=…`, or '-'.
        connection_string: String,
        /// Use this host:port instead of the endpoint in the hybrid connection's userMetadata.
        #[arg(long)]
        endpoint: Option<String>,
        /// Control channels to keep open (1-25); each is a listener on the relay.
        #[arg(long, default_value_t = 1)]
        listeners: u32,
        /// Extra CA certificate to trust for the relay (the emulator's ca.pem).
        #[arg(long, env = "HCM_CA_FILE")]
        ca_file: Option<PathBuf>,
        /// Do not ask the relay for the endpoint and check the key now.
        #[arg(long)]
        no_verify: bool,
    },
    /// List the configured hybrid connections and their status.
    List {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one hybrid connection in detail.
    Show {
        /// Name (EntityPath), or namespace/name.
        name: String,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Remove a hybrid connection (a running service stops serving it within a second).
    Remove {
        /// Name (EntityPath), or namespace/name.
        name: String,
    },
    /// Print the version.
    Version,
    /// Serve every configured hybrid connection until SIGINT or SIGTERM.
    Run(RunArgs),
}

/// Options of `hcm run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Extra CA certificate to trust for relays whose entries name none.
    #[arg(long, env = "HCM_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Seconds live tunnels may run on after a stop signal.
    #[arg(long, default_value_t = 30.0, value_parser = hc_process::seconds(0.0, 86_400.0))]
    pub grace: f64,
    /// Exit with an error when a hybrid connection fails for good (404, 401, bad endpoint) or
    /// has no open control channel for --failure-timeout seconds; for supervisors.
    #[arg(long)]
    pub exit_on_failure: bool,
    /// See --exit-on-failure.
    #[arg(long, default_value_t = 300.0, value_parser = hc_process::seconds(1.0, 7.0 * 86_400.0))]
    pub failure_timeout: f64,
    /// Lifetime in seconds of the tokens this HCM signs; they are renewed at 80%.
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..=MAX_TOKEN_TTL))]
    pub token_ttl: u64,
    /// Seconds between keep-alive pings on control channels.
    #[arg(long, default_value_t = 30.0, value_parser = hc_process::seconds(0.1, 3600.0))]
    pub keepalive: f64,
    /// First reconnect delay in seconds (at least 0.05: the delay doubles from here, so zero
    /// would retry in a tight loop).
    #[arg(long, default_value_t = 1.0, value_parser = hc_process::seconds(MIN_BACKOFF, 3600.0))]
    pub min_backoff: f64,
    /// Longest reconnect delay in seconds (not less than --min-backoff).
    #[arg(long, default_value_t = 30.0, value_parser = hc_process::seconds(MIN_BACKOFF, 86_400.0))]
    pub max_backoff: f64,
    /// Seconds allowed to connect to an endpoint.
    #[arg(long, default_value_t = 5.0, value_parser = hc_process::seconds(0.1, 600.0))]
    pub endpoint_timeout: f64,
    /// Connections to the relay kept open ahead of need for each hybrid connection that is
    /// accepting tunnels, so a new tunnel's rendezvous pays only its WebSocket upgrade
    /// (0: dial for every tunnel).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(0..=64))]
    pub warm_connections: u16,
    /// Seconds a warm connection waits before it is replaced; keep it below the relay's
    /// limit on a connection that sends no request (the emulator's --handshake-timeout).
    /// Connections are kept warm for six times this after the last tunnel.
    #[arg(long, default_value_t = 5.0, value_parser = hc_process::seconds(0.1, 600.0))]
    pub warm_max_idle: f64,
    /// Tunnels served at once over all hybrid connections; more are rejected with 503.
    #[arg(long, default_value_t = crate::worker::DEFAULT_MAX_TUNNELS as u64, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_tunnels: u64,
    /// Serve /healthz, /readyz (200 once every hybrid connection has an open control
    /// channel; `?wait=SECONDS` holds the answer until then) and /metrics (Prometheus) on
    /// this address, e.g. 127.0.0.1:9100 (no authentication: keep it on loopback).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// Shortest reconnect delay accepted.
const MIN_BACKOFF: f64 = 0.05;
/// Longest token lifetime accepted (a year), so expiries stay far from overflow.
const MAX_TOKEN_TTL: u64 = 365 * 86_400;

fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s).unwrap_or(Duration::ZERO)
}

/// Runs one verb.
pub async fn execute(cli: Cli, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let dir = cli
        .data_dir
        .clone()
        .unwrap_or_else(|| hc_process::default_data_dir("hcm"));
    match cli.command {
        Command::Add {
            connection_string,
            endpoint,
            listeners,
            ca_file,
            no_verify,
        } => {
            add(
                &dir,
                &connection_string,
                endpoint,
                listeners,
                ca_file,
                no_verify,
            )
            .await
        }
        Command::List { json } => list(&dir, json),
        Command::Show { name, json } => show(&dir, &name, json),
        Command::Remove { name } => remove(&dir, &name),
        Command::Version => {
            println!("hcm {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Run(args) => {
            if args.max_backoff < args.min_backoff {
                bail!(
                    "--max-backoff ({} s) must not be less than --min-backoff ({} s)",
                    args.max_backoff,
                    args.min_backoff
                );
            }
            let options = ServiceOptions {
                data_dir: dir,
                worker: WorkerOptions {
                    token_ttl: Duration::from_secs(args.token_ttl),
                    keepalive: secs(args.keepalive),
                    backoff_base: secs(args.min_backoff),
                    backoff_cap: secs(args.max_backoff),
                    endpoint_timeout: secs(args.endpoint_timeout),
                    ca_file: args.ca_file,
                    warm: hc_client::warm::WarmOptions::new(
                        usize::from(args.warm_connections),
                        secs(args.warm_max_idle),
                    ),
                    ..WorkerOptions::default()
                }
                .with_max_tunnels(usize::try_from(args.max_tunnels).unwrap_or(usize::MAX)),
                grace: secs(args.grace),
                reload_interval: Duration::from_millis(500),
                exit_on_failure: args.exit_on_failure.then(|| secs(args.failure_timeout)),
                metrics_listen: args.metrics_listen,
            };
            service::run(options, shutdown).await
        }
    }
}

async fn add(
    dir: &Path,
    connection_string: &str,
    endpoint: Option<String>,
    listeners: u32,
    ca_file: Option<PathBuf>,
    no_verify: bool,
) -> anyhow::Result<()> {
    let text = if connection_string == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("cannot read the connection string from stdin")?;
        s
    } else {
        connection_string.to_owned()
    };
    let ca_file = ca_file
        .map(|p| {
            std::fs::canonicalize(&p).with_context(|| format!("CA file {} not found", p.display()))
        })
        .transpose()?;
    let entry = Entry::new(&text, endpoint, listeners, ca_file)?;
    if !no_verify {
        verify(&entry).await?;
    }
    let mut config = Config::load(dir)?;
    let key = entry.key();
    let verb = match config.connections.iter().position(|e| e.key() == key) {
        Some(i) => {
            config.connections[i] = entry;
            "Updated"
        }
        None => {
            config.connections.push(entry);
            "Added"
        }
    };
    config.save(dir)?;
    println!("{verb} {key}");
    Ok(())
}

/// Asks the relay for the endpoint, as `run` will: fails on 404, 401 and bad metadata; only
/// warns when the relay cannot be reached now.
async fn verify(entry: &Entry) -> anyhow::Result<()> {
    let cs = entry.parsed()?;
    let tls = hc_client::tls::client_config(entry.ca_file.as_deref())?;
    let relay = RelayEndpoint::from_endpoint(&cs.endpoint, tls)?;
    let tokens = TokenProvider::from_connection_string(&cs, Duration::from_secs(600));
    match hc_client::runtime::get(&relay, &entry.name(), &tokens).await {
        Ok(info) => {
            let endpoint = match (&entry.endpoint, info.user_metadata.as_deref()) {
                (Some(e), _) => format!("{e} (override)"),
                (None, Some(m)) => format!(
                    "{} (from userMetadata)",
                    Endpoint::from_user_metadata(m)
                        .with_context(|| format!("hybrid connection '{}'", entry.name()))?
                ),
                (None, None) => {
                    bail!(
                        "hybrid connection '{}' has no userMetadata with an endpoint; add it with --endpoint host:port",
                        entry.name()
                    )
                }
            };
            println!(
                "Endpoint {endpoint}; {} listener(s) connected now",
                info.listener_count
            );
            Ok(())
        }
        Err(e) if e.is_permanent() => Err(e)
            .with_context(|| format!("the relay refused hybrid connection '{}'", entry.name())),
        Err(e) => {
            eprintln!("warning: could not check with the relay now ({e}); adding anyway");
            Ok(())
        }
    }
}

fn status_text(status: Option<&HcStatus>, live: bool) -> String {
    match (live, status) {
        (false, _) => "Not running".into(),
        (true, None) => "Starting".into(),
        (true, Some(s)) => format!("{:?}", s.state),
    }
}

fn row(entry: &Entry, live: Option<&StatusFile>) -> serde_json::Value {
    let status = live.and_then(|l| l.connections.get(&entry.key()));
    let endpoint = status
        .and_then(|s| s.endpoint.clone())
        .or_else(|| entry.endpoint.clone());
    json!({
        "name": entry.name(),
        "namespace": entry.namespace(),
        "endpoint": endpoint,
        "status": status_text(status, live.is_some()),
        "listeners": entry.listeners,
        "channelsOpen": status.map(|s| s.channels_open).unwrap_or(0),
        "relayListenerCount": status.and_then(|s| s.relay_listener_count),
        "endpointReachable": status.and_then(|s| s.endpoint_reachable),
        "endpointCheckedAt": status.and_then(|s| s.endpoint_checked_at),
        "lastError": status.and_then(|s| s.last_error.clone()),
        "tunnelsActive": status.map(|s| s.tunnels_active).unwrap_or(0),
        "tunnelsTotal": status.map(|s| s.tunnels_total).unwrap_or(0),
        "tunnelsFailed": status.map(|s| s.tunnels_failed).unwrap_or(0),
    })
}

fn list(dir: &Path, as_json: bool) -> anyhow::Result<()> {
    let config = Config::load(dir)?;
    let live = StatusFile::read_live(dir);
    let rows: Vec<serde_json::Value> = config
        .connections
        .iter()
        .map(|e| row(e, live.as_ref()))
        .collect();
    if as_json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if rows.is_empty() {
        println!(
            "No hybrid connections configured. Add one with: hcm add \"<gateway connection string>\""
        );
        return Ok(());
    }
    let text = |v: &serde_json::Value, k: &str| {
        v[k].as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| "-".into())
    };
    let table: Vec<[String; 5]> = rows
        .iter()
        .map(|r| {
            let relay = r["relayListenerCount"]
                .as_u64()
                .map(|n| format!(" (relay: {n})"))
                .unwrap_or_default();
            [
                text(r, "name"),
                text(r, "namespace"),
                text(r, "endpoint"),
                text(r, "status"),
                format!("{}/{}{relay}", r["channelsOpen"], r["listeners"]),
            ]
        })
        .collect();
    let header = ["NAME", "NAMESPACE", "ENDPOINT", "STATUS", "LISTENERS"].map(String::from);
    let widths: Vec<usize> = (0..5)
        .map(|i| {
            table
                .iter()
                .chain([&header])
                .map(|r| r[i].len())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |r: &[String; 5]| {
        r.iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    println!("{}", line(&header));
    for (cells, r) in table.iter().zip(&rows) {
        println!("{}", line(cells));
        // A hybrid connection short of channels says why, under its row.
        let short =
            r["channelsOpen"].as_u64() < r["listeners"].as_u64() && r["status"] != "Not running";
        if let Some(error) = r["lastError"].as_str().filter(|_| short) {
            println!("  last error: {error}");
        }
    }
    Ok(())
}

fn show(dir: &Path, name: &str, as_json: bool) -> anyhow::Result<()> {
    let config = Config::load(dir)?;
    let entry = &config.connections[config.find(name)?];
    let live = StatusFile::read_live(dir);
    let mut r = row(entry, live.as_ref());
    let cs = entry.parsed()?;
    r["serviceBusEndpoint"] = json!(cs.endpoint);
    r["keyName"] = json!(entry.key_name());
    r["caFile"] = json!(entry.ca_file);
    if let Some(s) = live.as_ref().and_then(|l| l.connections.get(&entry.key())) {
        r["endpointSource"] = json!(s.endpoint_source);
        r["endpointError"] = json!(s.endpoint_error);
        r["connectedSince"] = json!(s.connected_since);
        r["connects"] = json!(s.connects);
        r["channelLosses"] = json!(s.channel_losses);
        r["connectFailures"] = json!(s.connect_failures);
        r["tokenRenewals"] = json!(s.token_renewals);
        r["endpointDialFailures"] = json!(s.endpoint_dial_failures);
        r["bytesToEndpoint"] = json!(s.bytes_to_endpoint);
        r["bytesFromEndpoint"] = json!(s.bytes_from_endpoint);
    }
    if let Some(addr) = live.as_ref().and_then(|l| l.metrics_address.clone()) {
        r["metricsAddress"] = json!(addr);
    }
    if as_json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    let fields = [
        ("Name", "name"),
        ("Namespace", "namespace"),
        ("Service Bus endpoint", "serviceBusEndpoint"),
        ("Key name", "keyName"),
        ("Endpoint", "endpoint"),
        ("Endpoint source", "endpointSource"),
        ("Status", "status"),
        ("Control channels open", "channelsOpen"),
        ("Control channels configured", "listeners"),
        ("Listeners on the relay", "relayListenerCount"),
        ("Endpoint reachable", "endpointReachable"),
        ("Endpoint checked at (unix)", "endpointCheckedAt"),
        ("Endpoint error", "endpointError"),
        ("Connected since (unix)", "connectedSince"),
        ("Tunnels active", "tunnelsActive"),
        ("Tunnels total", "tunnelsTotal"),
        ("Tunnels failed", "tunnelsFailed"),
        ("Control channel connects", "connects"),
        ("Control channels lost", "channelLosses"),
        ("Failed channel attempts", "connectFailures"),
        ("Token renewals", "tokenRenewals"),
        ("Endpoint dial failures", "endpointDialFailures"),
        ("Metrics", "metricsAddress"),
        ("Bytes to endpoint", "bytesToEndpoint"),
        ("Bytes from endpoint", "bytesFromEndpoint"),
        ("Last error", "lastError"),
        ("CA file", "caFile"),
    ];
    for (label, key) in fields {
        let v = &r[key];
        if !v.is_null() {
            println!(
                "{label:<29} {}",
                v.as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| v.to_string())
            );
        }
    }
    Ok(())
}

fn remove(dir: &Path, name: &str) -> anyhow::Result<()> {
    let mut config = Config::load(dir)?;
    let i = config.find(name)?;
    let entry = config.connections.remove(i);
    config.save(dir)?;
    println!("Removed {}", entry.key());
    Ok(())
}
