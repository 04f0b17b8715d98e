//! Child processes as the user runs them: the workspace's binaries found next to the running
//! program (or on `PATH`), each started with its stderr in a log file and killed when
//! dropped; their memory and descriptors read from `/proc`.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};

/// Path of a workspace binary: next to the running program (a test in `deps/`, or a binary
/// such as `bench` in the profile directory itself), else on `PATH` (after `cargo install`).
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

/// A path as UTF-8 text (test and data directories are).
pub fn path(p: &Path) -> &str {
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

