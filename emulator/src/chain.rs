//! The whole chain as a user runs it: the `relay-server`, `hcm` and `app-side-shim` binaries
//! as separate processes (TLS with the generated CA, ports chosen by the OS), for the
//! benchmark and for tests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::procs::{Proc, binary, http_get, metrics_address, path};

/// A chain to start, step by step:
///
/// ```no_run
/// # async fn f() -> anyhow::Result<()> {
/// use hc_emulator::chain::ChainBuilder;
/// let chain = ChainBuilder::new("127.0.0.1:6379")
///     .relay_args(["--max-connections-per-namespace", "1000"])
///     .shim_args(["--socks5", "127.0.0.1:0"])
///     .hybrid_connection("spare")
///     .start()
///     .await?;
/// println!("connect to {}", chain.forward);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ChainBuilder {
    endpoint: String,
    plain: bool,
    relay_args: Vec<String>,
    log: String,
    hcm_args: Vec<String>,
    shim_args: Vec<String>,
    extra_hybrid_connections: Vec<String>,
}

impl ChainBuilder {
    /// A chain whose hybrid connection leads to `endpoint` (`host:port`): TLS between the
    /// parts, default flags, log filter `info`.
    pub fn new(endpoint: impl Into<String>) -> Self {
        ChainBuilder {
            endpoint: endpoint.into(),
            plain: false,
            relay_args: Vec::new(),
            log: "info".into(),
            hcm_args: Vec::new(),
            shim_args: Vec::new(),
            extra_hybrid_connections: Vec::new(),
        }
    }

    /// Plain `ws://` between the parts instead of TLS (when `plain`).
    pub fn plain(mut self, plain: bool) -> Self {
        self.plain = plain;
        self
    }

    /// Log filter for the three processes.
    pub fn log(mut self, filter: &str) -> Self {
        self.log = filter.into();
        self
    }

    /// Extra `relay-server` arguments.
    pub fn relay_args<S: Into<String>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.relay_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Extra `hcm run` arguments.
    pub fn hcm_args<S: Into<String>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.hcm_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Extra `app-side-shim run` arguments (after its `--forward`).
    pub fn shim_args<S: Into<String>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.shim_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// One more hybrid connection on the relay (default rules, no endpoint, no listener),
    /// for tests that need one beside the chain's own.
    pub fn hybrid_connection(mut self, name: &str) -> Self {
        self.extra_hybrid_connections.push(name.into());
        self
    }

    /// Starts the three processes (on a blocking thread); returns once the HCM is connected.
    pub async fn start(self) -> anyhow::Result<Chain> {
        tokio::task::spawn_blocking(move || Chain::start_blocking(&self)).await?
    }
}

/// relay-server + hcm + app-side-shim for one hybrid connection to `endpoint`.
#[derive(Debug)]
pub struct Chain {
    /// Working directory (data dirs, configs, logs).
    pub dir: tempfile::TempDir,
    /// The relay process.
    pub relay: Proc,
    /// The HCM process (`None` while stopped).
    pub hcm: Option<Proc>,
    /// The shim process.
    pub shim: Proc,
    /// What the shim printed up to "Ready." (its listeners' addresses).
    pub shim_banner: Vec<String>,
    /// Where clients connect.
    pub forward: SocketAddr,
    /// The relay's port.
    pub relay_port: u16,
    /// The printed Send connection string of the chain's hybrid connection.
    pub send_cs: String,
    /// The relay's CA file.
    pub ca: PathBuf,
    /// Whether the relay's data plane is plain ws/http.
    pub plain: bool,
    /// The relay's address (its health, metrics and status page are there too).
    pub relay_addr: SocketAddr,
    /// Where the HCM serves `/healthz`, `/readyz`, `/metrics`.
    pub hcm_metrics: SocketAddr,
    /// Where the shim serves `/healthz`, `/readyz`, `/metrics`.
    pub shim_metrics: SocketAddr,
}

/// Name of the chain's hybrid connection.
pub const HC: &str = "chain";

/// The rest of the first line of `lines` that starts with `prefix` (after trimming).
pub fn banner_value(lines: &[String], prefix: &str) -> Option<String> {
    lines
        .iter()
        .map(|l| l.trim())
        .find_map(|l| l.strip_prefix(prefix))
        .map(|r| r.trim().to_owned())
}

impl Chain {
    /// The chain to `endpoint` with defaults ([`ChainBuilder::new`]); returns once the HCM is
    /// connected.
    pub async fn start(endpoint: &str) -> anyhow::Result<Chain> {
        ChainBuilder::new(endpoint).start().await
    }

    fn start_blocking(options: &ChainBuilder) -> anyhow::Result<Chain> {
        let endpoint = options.endpoint.as_str();
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        let log = options.log.clone();
        let mut hybrid_connections = vec![serde_json::json!({"name": HC, "endpoint": endpoint})];
        hybrid_connections.extend(
            options
                .extra_hybrid_connections
                .iter()
                .map(|name| serde_json::json!({ "name": name })),
        );
        let relay_config = serde_json::json!({"namespaces": [{"name": "default", "default": true, "hybridConnections": hybrid_connections}]});
        std::fs::write(d.join("relay.json"), relay_config.to_string())?;
        let relay_data = d.join("relay");
        let config = d.join("relay.json");
        let mut relay_args = vec![
            "--data-dir",
            path(&relay_data),
            "--listen",
            "127.0.0.1:0",
            "--config",
            path(&config),
        ];
        if options.plain {
            relay_args.push("--plain");
        }
        relay_args.extend(options.relay_args.iter().map(String::as_str));
        let (relay, lines) = Proc::start_logging(
            &binary("relay-server")?,
            &relay_args,
            d.join("relay.log"),
            Some("Ready."),
            &log,
        )?;
        let listening = banner_value(
            &lines,
            "Azure Relay Hybrid Connections emulator listening on ",
        )
        .context("relay banner")?;
        let relay_port: u16 = listening
            .split_whitespace()
            .next()
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .context("relay port")?;
        let scheme = |cs: String| {
            if options.plain {
                cs.replacen("Endpoint=sb://", "Endpoint=ws://", 1)
            } else {
                cs
            }
        };
        // Keys are not printed when stdout is not a terminal; the banner names the file.
        let keys_file =
            banner_value(&lines, "Connection strings: ").context("keys file in the banner")?;
        let keys = std::fs::read_to_string(keys_file.trim_end_matches(" (mode 0600)"))
            .context("reading the keys file")?;
        let keys: Vec<String> = keys.lines().map(str::to_owned).collect();
        let listen_cs = scheme(banner_value(&keys, "Listen ").context("Listen connection string")?);
        let send_cs = scheme(banner_value(&keys, "Send ").context("Send connection string")?);
        let ca = relay_data.join("ca.pem");
        let relay_addr = std::net::SocketAddr::from(([127, 0, 0, 1], relay_port));
        let relay_ca = (!options.plain).then_some(ca.as_path());
        let (status, body) = http_get(relay_addr, "/readyz?wait=30", relay_ca)?;
        if status != 200 {
            bail!("the relay is not ready ({status}): {body}");
        }

        let hcm_dir = d.join("hcm");
        let add = Command::new(binary("hcm")?)
            .args([
                "--data-dir",
                path(&hcm_dir),
                "add",
                &listen_cs,
                "--ca-file",
                path(&ca),
            ])
            .output()?;
        if !add.status.success() {
            bail!("hcm add failed: {}", String::from_utf8_lossy(&add.stderr));
        }
        let (hcm, hcm_metrics) = Self::run_hcm(d, &log, &options.hcm_args)?;

        let (host, port) = endpoint.rsplit_once(':').context("endpoint is host:port")?;
        let shim_config = serde_json::json!({"caFile": ca, "hybridConnections": [{"connectionString": send_cs, "hostname": host, "port": port.parse::<u16>()?}]});
        std::fs::write(d.join("shim.json"), shim_config.to_string())?;
        let (shim_json, forward_spec) = (d.join("shim.json"), format!("127.0.0.1:0={endpoint}"));
        let mut shim_args = vec![
            "--config",
            path(&shim_json),
            "run",
            "--forward",
            &forward_spec,
            "--metrics-listen",
            "127.0.0.1:0",
        ];
        shim_args.extend(options.shim_args.iter().map(String::as_str));
        let (shim, lines) = Proc::start_logging(
            &binary("app-side-shim")?,
            &shim_args,
            d.join("shim.log"),
            Some("Ready."),
            &log,
        )?;
        let forward = banner_value(&lines, "Forwarding ")
            .and_then(|l| l.split_whitespace().next().map(str::to_owned))
            .context("forward address")?
            .parse()?;
        let shim_metrics = metrics_address(&lines).context("shim metrics address")?;
        let (status, body) = http_get(shim_metrics, "/readyz", None)?;
        if status != 200 {
            bail!("the shim is not ready after Ready. ({status}): {body}");
        }
        let chain = Chain {
            dir,
            relay,
            relay_addr,
            hcm: Some(hcm),
            hcm_metrics,
            shim_metrics,
            shim,
            shim_banner: lines,
            forward,
            relay_port,
            send_cs,
            ca,
            plain: options.plain,
        };
        chain.wait_hcm_connected()?;
        Ok(chain)
    }

    fn run_hcm(
        d: &Path,
        log: &str,
        extra: &[String],
    ) -> anyhow::Result<(Proc, std::net::SocketAddr)> {
        let data = d.join("hcm");
        let mut args = vec![
            "--data-dir",
            path(&data),
            "run",
            "--min-backoff",
            "0.05",
            "--max-backoff",
            "0.5",
            "--metrics-listen",
            "127.0.0.1:0",
        ];
        args.extend(extra.iter().map(String::as_str));
        let (p, lines) = Proc::start_logging(
            &binary("hcm")?,
            &args,
            d.join("hcm.log"),
            Some("Metrics: "),
            log,
        )?;
        let metrics = metrics_address(&lines).context("hcm metrics address")?;
        Ok((p, metrics))
    }

    /// Waits until the HCM is ready, every control channel open (its `/readyz?wait=20`
    /// answers then, or with why not after 20 s).
    pub fn wait_hcm_connected(&self) -> anyhow::Result<()> {
        let (status, body) = http_get(self.hcm_metrics, "/readyz?wait=20", None)?;
        if status != 200 {
            bail!(
                "hcm did not connect ({status}): {body}\n{}",
                self.hcm.as_ref().map(Proc::log_text).unwrap_or_default()
            );
        }
        Ok(())
    }

    /// The Prometheus text of the relay (`relay`), the HCM (`hcm`) or the shim (`shim`).
    pub fn metrics(&self, which: &str) -> anyhow::Result<String> {
        let (addr, ca) = match which {
            "relay" => (self.relay_addr, (!self.plain).then_some(self.ca.as_path())),
            "hcm" => (self.hcm_metrics, None),
            "shim" => (self.shim_metrics, None),
            other => bail!("no process '{other}' in the chain"),
        };
        let (status, body) = http_get(addr, "/metrics", ca)?;
        if status != 200 {
            bail!("{which} /metrics: {status} {body}");
        }
        Ok(body)
    }

    /// The relay's data directory (state, certificates, `connection-strings.txt`).
    pub fn relay_data_dir(&self) -> PathBuf {
        self.dir.path().join("relay")
    }

    /// The HCM's live status for the chain's hybrid connection.
    pub fn hcm_status(&self) -> Option<hcm::status::HcStatus> {
        hcm::status::StatusFile::read_live(&self.dir.path().join("hcm"))?
            .connections
            .values()
            .next()
            .cloned()
    }

    /// Kills the HCM with SIGKILL.
    pub fn kill_hcm(&mut self) {
        if let Some(mut p) = self.hcm.take() {
            p.kill();
        }
    }

    /// Starts the HCM again and waits until it is connected.
    pub fn restart_hcm(&mut self) -> anyhow::Result<()> {
        let (hcm, metrics) = Self::run_hcm(self.dir.path(), "info", &[])?;
        self.hcm = Some(hcm);
        self.hcm_metrics = metrics;
        self.wait_hcm_connected()
    }

    /// Logs of all three, for failure messages.
    pub fn logs(&self) -> String {
        format!(
            "--- relay\n{}\n--- hcm\n{}\n--- shim\n{}",
            self.relay.log_text(),
            self.hcm.as_ref().map(Proc::log_text).unwrap_or_default(),
            self.shim.log_text()
        )
    }
}
