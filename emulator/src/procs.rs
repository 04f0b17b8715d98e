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
    let on_path = std::env::var_os("PATH").into_iter().flat_map(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .collect::<Vec<_>>()
    });
    std::iter::once(profile_dir.join(name))
        .chain(on_path)
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "{name} is neither in {} nor on PATH: `cargo install --path` the crate that has it (see the README)",
                profile_dir.display()
            )
        })
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
