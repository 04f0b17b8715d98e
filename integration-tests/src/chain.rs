//! The whole chain as a user runs it: the `relay-server`, `hcm` and `app-side-shim` binaries
//! as separate processes (TLS with the generated CA, ports chosen by the OS), plus real
//! endpoint servers: Redis and PostgreSQL from Debian's packages, and TCP echo, sink and
//! greeter servers.
//!
//! The binaries are the ones `cargo test --workspace` builds next to the test executable.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Path of a workspace binary built next to the running program (a test in `deps/`, or a
/// binary such as `bench` in the profile directory itself).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("executable path");
    let here = exe.parent().expect("executable directory");
    let candidates = [
        here.join(name),
        here.parent().map(|p| p.join(name)).unwrap_or_default(),
    ];
    let found = candidates.iter().find(|p| p.is_file()).cloned();
    found.unwrap_or_else(|| {
        panic!("{name} is missing next to {}: build the workspace's binaries first (`cargo test --workspace` does; for `bench`: `cargo build --release --workspace`)", exe.display())
    })
}

/// How to run a chain.
#[derive(Debug, Clone, Default)]
pub struct ChainOptions {
    /// Plain `ws://` between the parts instead of TLS.
    pub plain: bool,
    /// Extra `relay-server` arguments.
    pub relay_args: Vec<String>,
    /// Log filter for the three processes (default `info`).
    pub log: Option<String>,
    /// Extra `hcm run` arguments.
    pub hcm_args: Vec<String>,
    /// Extra `app-side-shim run` arguments (after `--forward`).
    pub shim_args: Vec<String>,
    /// More hybrid connections on the relay (default rules, no endpoint), for tests that
    /// need one beside the chain's own.
    pub extra_hybrid_connections: Vec<String>,
}

/// A child process killed on drop, with its stderr in a log file.
#[derive(Debug)]
pub struct Proc {
    child: Child,
    /// Its log.
    pub log: PathBuf,
}

impl Proc {
    /// Starts `program args`, logging stderr to `log`; returns stdout lines up to `until`.
    pub fn start(
        program: &Path,
        args: &[&str],
        log: PathBuf,
        until: Option<&str>,
    ) -> anyhow::Result<(Proc, Vec<String>)> {
        Self::start_logging(program, args, log, until, "info")
    }

    /// [`Proc::start`] with a log filter.
    pub fn start_logging(
        program: &Path,
        args: &[&str],
        log: PathBuf,
        until: Option<&str>,
        filter: &str,
    ) -> anyhow::Result<(Proc, Vec<String>)> {
        let mut child = Command::new(program)
            .args(args)
            .env("RUST_LOG", filter)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        let mut lines = Vec::new();
        let mut out = BufReader::new(child.stdout.take().context("stdout")?).lines();
        if let Some(until) = until {
            for line in out.by_ref() {
                let line = line?;
                let done = line.trim() == until;
                lines.push(line);
                if done {
                    break;
                }
            }
            if lines.last().map(|l| l.trim()) != Some(until) {
                bail!(
                    "{} exited before '{until}': {lines:?}\n{}",
                    program.display(),
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        }
        std::thread::spawn(move || for _ in out {});
        Ok((Proc { child, log }, lines))
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the process, KiB (VmRSS).
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// Open file descriptors (sockets included) of the process.
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// SIGKILL and wait.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
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
    /// Starts the three processes over TLS; returns once the HCM is connected.
    pub fn start(endpoint: &str) -> anyhow::Result<Chain> {
        Self::start_with(endpoint, &ChainOptions::default())
    }

    /// Starts the three processes with `options`; returns once the HCM is connected.
    pub fn start_with(endpoint: &str, options: &ChainOptions) -> anyhow::Result<Chain> {
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        let log = options.log.clone().unwrap_or_else(|| "info".into());
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
            &binary("relay-server"),
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

        let hcm_dir = d.join("hcm");
        let add = Command::new(binary("hcm"))
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
        let hcm = Self::run_hcm(d, &log, &options.hcm_args)?;

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
        ];
        shim_args.extend(options.shim_args.iter().map(String::as_str));
        let (shim, lines) = Proc::start_logging(
            &binary("app-side-shim"),
            &shim_args,
            d.join("shim.log"),
            Some("Ready."),
            &log,
        )?;
        let forward = banner_value(&lines, "Forwarding ")
            .and_then(|l| l.split_whitespace().next().map(str::to_owned))
            .context("forward address")?
            .parse()?;
        let chain = Chain {
            dir,
            relay,
            hcm: Some(hcm),
            shim,
            shim_banner: lines,
            forward,
            relay_port,
            send_cs,
            ca,
        };
        chain.wait_hcm_connected()?;
        Ok(chain)
    }

    fn run_hcm(d: &Path, log: &str, extra: &[String]) -> anyhow::Result<Proc> {
        let data = d.join("hcm");
        let mut args = vec![
            "--data-dir",
            path(&data),
            "run",
            "--min-backoff",
            "0.05",
            "--max-backoff",
            "0.5",
        ];
        args.extend(extra.iter().map(String::as_str));
        let (p, _) = Proc::start_logging(&binary("hcm"), &args, d.join("hcm.log"), None, log)?;
        Ok(p)
    }

    /// Waits until the HCM reports an open control channel (20 s at most).
    pub fn wait_hcm_connected(&self) -> anyhow::Result<()> {
        for _ in 0..1000 {
            let status = hcm::status::StatusFile::read_live(&self.dir.path().join("hcm"));
            if status.is_some_and(|s| s.connections.values().any(|c| c.channels_open > 0)) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!(
            "hcm did not connect: {}",
            self.hcm.as_ref().map(Proc::log_text).unwrap_or_default()
        )
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

    /// Sends `signal` (e.g. `STOP`, `CONT`) to the relay process.
    pub fn signal_relay(&self, signal: &str) -> anyhow::Result<()> {
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &self.relay.pid().to_string()])
            .status()?
            .success();
        if !ok {
            bail!("kill -{signal} failed");
        }
        Ok(())
    }

    /// Kills the HCM with SIGKILL.
    pub fn kill_hcm(&mut self) {
        if let Some(mut p) = self.hcm.take() {
            p.kill();
        }
    }

    /// Starts the HCM again and waits until it is connected.
    pub fn restart_hcm(&mut self) -> anyhow::Result<()> {
        self.hcm = Some(Self::run_hcm(self.dir.path(), "info", &[])?);
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

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A free TCP port on 127.0.0.1 for servers that cannot report the one they bound.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Waits until something accepts TCP connections on `port` (20 s at most).
pub fn wait_for_port(port: u16) -> anyhow::Result<()> {
    for _ in 0..1000 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("nothing listens on 127.0.0.1:{port}")
}

/// A Redis server from Debian's `redis-server` on a free port, without persistence.
pub fn redis(dir: &Path) -> anyhow::Result<(Proc, u16)> {
    let port = free_port();
    let (p, _) = Proc::start(
        Path::new("redis-server"),
        &[
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            path(dir),
        ],
        dir.join("redis.log"),
        None,
    )
    .context("redis-server is needed (Debian package redis-server)")?;
    wait_for_port(port)?;
    Ok((p, port))
}

/// A PostgreSQL cluster from Debian's `postgresql` (trust auth, user `postgres`) on a free
/// port; stopped when dropped. As root it runs as the `postgres` user.
#[derive(Debug)]
pub struct Postgres {
    /// The port.
    pub port: u16,
    data: PathBuf,
    bin: PathBuf,
    as_postgres: bool,
}

impl Postgres {
    /// initdb + pg_ctl start (waits until it accepts connections).
    pub fn start(dir: &Path) -> anyhow::Result<Postgres> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .context("PostgreSQL is needed (Debian package postgresql)")?
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .find(|b| b.join("initdb").exists())
            .context("no initdb under /usr/lib/postgresql")?;
        let data = dir.join("pgdata");
        std::fs::create_dir_all(&data)?;
        let as_postgres = nix_is_root();
        if as_postgres {
            chown_to_postgres(dir)?;
            chown_to_postgres(&data)?;
        }
        let port = free_port();
        let pg = Postgres {
            port,
            data,
            bin,
            as_postgres,
        };
        pg.run(
            "initdb",
            &[
                "-D",
                path(&pg.data),
                "--auth=trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        )?;
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            path(&pg.data)
        );
        pg.run(
            "pg_ctl",
            &[
                "-D",
                path(&pg.data),
                "-o",
                &options,
                "-l",
                path(&pg.data.join("server.log")),
                "-w",
                "start",
            ],
        )?;
        Ok(pg)
    }

    fn run(&self, tool: &str, args: &[&str]) -> anyhow::Result<()> {
        let program = self.bin.join(tool);
        let out = if self.as_postgres {
            Command::new("runuser")
                .args(["-u", "postgres", "--", path(&program)])
                .args(args)
                .output()?
        } else {
            Command::new(&program).args(args).output()?
        };
        if !out.status.success() {
            bail!(
                "{tool} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.run(
            "pg_ctl",
            &["-D", path(&self.data), "-m", "immediate", "stop"],
        );
    }
}

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn chown_to_postgres(p: &Path) -> anyhow::Result<()> {
    let ok = Command::new("chown")
        .args(["postgres:postgres", path(p)])
        .status()?
        .success();
    if !ok {
        bail!("cannot chown {} to postgres", p.display());
    }
    Ok(())
}

/// A TCP echo server that answers EOF with EOF.
pub async fn echo_server() -> SocketAddr {
    serve(|mut s| async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = s.shutdown().await;
    })
    .await
}

/// A TCP sink: reads and discards until EOF.
pub async fn sink_server() -> SocketAddr {
    serve(|mut s| async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await
}

/// A TCP server that writes `greeting` and closes at once, reading nothing.
pub async fn greeter_server(greeting: &'static [u8]) -> SocketAddr {
    serve(move |mut s| async move {
        let _ = s.write_all(greeting).await;
        let _ = s.shutdown().await;
    })
    .await
}

async fn serve<F, Fut>(handle: F) -> SocketAddr
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(handle(s));
        }
    });
    addr
}
