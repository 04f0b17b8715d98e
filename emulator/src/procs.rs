//! Child processes as the user runs them: the workspace's binaries found next to the running
//! program (or on `PATH`), each started with its stderr in a log file and killed when
//! dropped; their memory and descriptors read from `/proc`.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context as _, bail};
pub use rustix::process::Signal;

/// Path of a workspace binary, up to date.
///
/// Run by cargo (a test, or `cargo run --bin bench`), the workspace's binaries are first
/// built into the same profile directory (once per process, `cargo build --workspace --bins`,
/// a no-op when nothing changed), so a test never runs a stale `hcm` after `cargo test -p
/// integration-tests` nor misses one that `cargo test` did not build. Otherwise (after `cargo
/// install`) the binary is looked up next to the running program, then on `PATH`.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("the running program's path")?;
    let here = exe.parent().context("the running program's directory")?;
    // A test runs from `<target>/<profile>/deps`, a binary from `<target>/<profile>`.
    let profile_dir = if here.file_name().is_some_and(|n| n == "deps") {
        here.parent().unwrap_or(here)
    } else {
        here
    };
    build_workspace_once(profile_dir)
        .with_context(|| format!("building the workspace's binaries for {name}"))?;
    Some(profile_dir.join(name))
        .filter(|p| p.is_file())
        .or_else(|| on_path(name))
        .with_context(|| {
            format!(
                "{name} is neither in {} nor on PATH: `cargo install --path` the crate that has it (see the README)",
                profile_dir.display()
            )
        })
}

/// Program `name` in a directory of `PATH`.
pub fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// `cargo build --workspace --bins` into `profile_dir`, once per process, when run by cargo
/// from this workspace's target directory; nothing otherwise.
fn build_workspace_once(profile_dir: &Path) -> anyhow::Result<()> {
    static BUILT: std::sync::Mutex<Option<Result<(), String>>> = std::sync::Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(done) = &*built {
        return done.clone().map_err(anyhow::Error::msg);
    }
    let result = build_workspace(profile_dir).map_err(|e| format!("{e:#}"));
    *built = Some(result.clone());
    result.map_err(anyhow::Error::msg)
}

fn build_workspace(profile_dir: &Path) -> anyhow::Result<()> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let (Some(cargo), true) = (std::env::var_os("CARGO"), manifest.is_file()) else {
        return Ok(()); // installed, or the sources are gone: use what is there
    };
    let (Some(target_dir), Some(profile)) = (
        profile_dir.parent(),
        profile_dir.file_name().and_then(|n| n.to_str()),
    ) else {
        return Ok(());
    };
    let profile = if profile == "debug" { "dev" } else { profile };
    let mut build = Command::new(cargo);
    // What cargo set for this program would look like changed inputs to build scripts
    // (`ring` reruns on CARGO_MANIFEST_DIR), rebuilding every time.
    for (var, _) in std::env::vars_os() {
        let var = var.to_string_lossy();
        if [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
        ]
        .iter()
        .any(|p| var.starts_with(p))
            || var == "CARGO_PRIMARY_PACKAGE"
            || var == "CARGO_TARGET_TMPDIR"
        {
            build.env_remove(var.as_ref());
        }
    }
    let status = build
        .args([
            "build",
            "--quiet",
            "--workspace",
            "--bins",
            "--profile",
            profile,
        ])
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(target_dir)
        .stdin(Stdio::null())
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("cargo build --workspace --bins --profile {profile}: {status}");
    }
    Ok(())
}

/// A child process killed on drop, with its stderr in a log file.
#[derive(Debug)]
pub struct Proc {
    child: Child,
    /// Its log.
    pub log: PathBuf,
}

impl Proc {
    /// Starts `program args`, logging stderr to `log`; returns stdout lines up to the first
    /// that contains `until`.
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
        Self::start_with_env(program, args, &[("RUST_LOG", filter)], log, until)
    }

    /// [`Proc::start`] with extra environment variables.
    pub fn start_with_env(
        program: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        log: PathBuf,
        until: Option<&str>,
    ) -> anyhow::Result<(Proc, Vec<String>)> {
        let mut child = Command::new(program)
            .args(args)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
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
                let done = line.contains(until);
                lines.push(line);
                if done {
                    break;
                }
            }
            if !lines.last().is_some_and(|l| l.contains(until)) {
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

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: Signal) -> std::io::Result<()> {
        rustix::process::kill_process(rustix::process::Pid::from_child(&self.child), signal)
            .map_err(Into::into)
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.signal(Signal::TERM)?;
        self.child.wait()
    }

    /// Waits for the exit.
    pub fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.child.wait()
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

/// A path as UTF-8 text (test and data directories are).
pub fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// `GET path` from `addr` (HTTP/1.1, `Host: localhost`), over TLS trusting the CA in `ca`
/// when given: the status and the body. For health and metrics endpoints: a `/readyz?wait=N`
/// is answered when the process is ready (or after N seconds), so no polling is needed.
pub fn http_get(
    addr: std::net::SocketAddr,
    path: &str,
    ca: Option<&Path>,
) -> anyhow::Result<(u16, String)> {
    let (status, body) = http_request(addr, "GET", path, None, ca)?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// One blocking HTTP/1.1 request (`Host: localhost`, `Connection: close`; a JSON `body`
/// when given), over TLS trusting the CA in `ca` when given: the status and the body, framed
/// by `Content-Length`, chunks, or the end of the connection. 150 s at most per read.
pub fn http_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    json: Option<&str>,
    ca: Option<&Path>,
) -> anyhow::Result<(u16, Vec<u8>)> {
    let tcp =
        std::net::TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(150)))?;
    let body = json.unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    match ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
            for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
                let cert: rustls::pki_types::CertificateDer<'static> = cert?;
                roots.add(cert)?;
            }
            let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth();
            let conn = rustls::ClientConnection::new(
                std::sync::Arc::new(config),
                rustls::pki_types::ServerName::try_from("localhost")?,
            )?;
            exchange(rustls::StreamOwned::new(conn, tcp), &request)
        }
        None => exchange(tcp, &request),
    }
    .with_context(|| format!("{method} {path} at {addr}"))
}

/// Writes `request`, reads the answer.
fn exchange(
    mut io: impl std::io::Read + std::io::Write,
    request: &str,
) -> anyhow::Result<(u16, Vec<u8>)> {
    use std::io::{BufRead as _, Read as _};
    io.write_all(request.as_bytes())?;
    let mut reader = BufReader::new(io);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            bail!("the connection closed before the head ended: {head:?}");
        }
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line: {head:?}"))?;
    let field = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_ascii_lowercase())
        })
    };
    let mut body = Vec::new();
    if let Some(length) = field("content-length") {
        body.resize(length.parse().context("Content-Length")?, 0);
        reader.read_exact(&mut body)?;
    } else if field("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim(), 16).context("chunk size")?;
            let mut chunk = vec![0u8; n + 2];
            reader.read_exact(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else {
        // A TLS peer that closes without close_notify still sent the whole answer.
        match reader.read_to_end(&mut body) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok((status, body))
}

/// The address in a banner line such as `Metrics: http://127.0.0.1:9100/metrics  (…)`.
pub fn metrics_address(lines: &[String]) -> Option<std::net::SocketAddr> {
    lines.iter().find_map(|l| {
        l.strip_prefix("Metrics: http://")?
            .split('/')
            .next()?
            .parse()
            .ok()
    })
}

/// CPU time used so far by the live threads of process `pid`, in ns: the first field of each
/// `/proc/{pid}/task/*/schedstat` (nanosecond resolution, where `/proc/{pid}/stat` counts
/// 10 ms ticks). 0 when the process is gone.
pub fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}
