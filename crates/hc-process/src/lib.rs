//! Process plumbing shared by `relay-server`, `hcm`, `app-side-shim`, `up` and `bench`: the
//! stop signal, the open-file limit, logging to stderr, the default data directory, and
//! atomic file writes. No protocol or client code lives here, so the relay may use it too.

pub mod observe;

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// A future that completes on SIGINT (Ctrl-C) or SIGTERM. The handlers are installed when
/// this is called, not when the future is first polled, so call it before announcing
/// readiness: a signal that arrives in between is then a clean stop, not the default action
/// (which kills the process). Call it inside the tokio runtime.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let handlers = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        )
    };
    async move {
        #[cfg(unix)]
        match handlers {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = int.recv() => {},
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        tracing::info!("signal received, stopping");
    }
}

/// Raises the open-file soft limit to the hard limit (each tunnel holds sockets), logs it and
/// returns it (0 when it could not be raised).
pub fn raise_fd_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            tracing::info!(limit, "open file limit");
            limit
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open file limit");
            0
        }
    }
}

/// The exit status of a command that returned `result`: success, or the error printed with
/// its causes as `error: …` on stderr and status 1. (clap exits with 2 for a bad command line
/// before a command runs.)
pub fn exit_status<E: std::fmt::Display>(result: Result<(), E>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Logs to stderr with `filter` (e.g. `info` or `relay_server=debug`) in `format`; colours
/// only on a terminal and only in text. The error names the bad filter.
pub fn init_logging(filter: &str, format: observe::LogFormat) -> Result<(), String> {
    use std::io::IsTerminal as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let targets: tracing_subscriber::filter::Targets = filter
        .parse()
        .map_err(|e| format!("invalid log filter '{filter}': {e}"))?;
    let registry = tracing_subscriber::registry().with(targets);
    match format {
        observe::LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::stderr().is_terminal()),
            )
            .init(),
        observe::LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            )
            .init(),
    }
    Ok(())
}

/// A command-line parser of seconds (for clap's `value_parser`): a finite number within
/// `[min, max]`. clap names the flag in its error; the text says what was wrong.
pub fn seconds(
    min: f64,
    max: f64,
) -> impl Fn(&str) -> Result<f64, String> + Clone + Send + Sync + 'static {
    move |text: &str| {
        let value: f64 = text
            .trim()
            .parse()
            .map_err(|_| format!("'{text}' is not a number of seconds"))?;
        if !value.is_finite() || value < min || value > max {
            return Err(format!("must be a number of seconds from {min} to {max}"));
        }
        Ok(value)
    }
}

/// `$XDG_DATA_HOME/{name}`, else `~/.local/share/{name}`, else `./{name}`.
pub fn default_data_dir(name: &str) -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join(name)
}

/// Writes `bytes` to `path` so that a crash leaves either the old or the new file (temp file,
/// fsync, rename, fsync of the directory), readable by its owner only (these files hold keys).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Removes the temporary files [`write_atomically`] leaves when its process is killed in the
/// middle of a write (`.{name}.{pid}.tmp`, possibly holding keys), for processes that are gone.
/// Returns how many were removed.
pub fn remove_stale_temp_files(dir: &Path) -> std::io::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(pid) = temp_file_owner(&name.to_string_lossy()) else {
            continue;
        };
        if !process_alive(pid) && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

/// The pid in a temporary file name of ours: `.{name}.{pid}.tmp`.
fn temp_file_owner(file_name: &str) -> Option<u32> {
    let stem = file_name.strip_prefix('.')?.strip_suffix(".tmp")?;
    let (_, pid) = stem.rsplit_once('.')?;
    pid.parse().ok()
}

/// Whether a process with this id exists (always true where that cannot be told).
pub fn process_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        Path::new(&format!("/proc/{pid}")).exists()
    } else {
        true
    }
}

/// A command-line value that is a secret (a token, a key): `Debug` shows `<redacted>`, so a
/// parsed command line can be logged or printed whole.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret text.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn secrets_are_redacted_in_debug() {
        let s: super::Secret = "abc123".parse().unwrap();
        assert_eq!(format!("{s:?}"), "<redacted>");
        assert_eq!(s.expose(), "abc123");
    }

    use super::*;

    #[test]
    fn atomic_writes_replace_and_leave_no_temp_file() {
        let dir = std::env::temp_dir().join(format!("hc-process-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        write_atomically(&path, b"one").unwrap();
        write_atomically(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        #[cfg(unix)]
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(
                &std::fs::metadata(&path).unwrap().permissions()
            ) & 0o777,
            0o600
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            init_logging("relay_server=loud", observe::LogFormat::Text).is_err(),
            "an unknown level is refused"
        );
        assert!(default_data_dir("x").ends_with("x"));
        let parse = seconds(0.05, 10.0);
        assert_eq!(parse(" 2.5 "), Ok(2.5));
        for bad in ["0", "11", "inf", "NaN", "-1", "soon"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn stale_temp_files_of_dead_processes_are_removed() {
        let dir = std::env::temp_dir().join(format!("hc-process-stale-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let dead = dir.join(format!(".state.json.{}.tmp", u32::MAX - 1));
        let mine = dir.join(format!(".state.json.{}.tmp", std::process::id()));
        let other = dir.join("notes.tmp");
        for f in [&dead, &mine, &other] {
            std::fs::write(f, b"x").unwrap();
        }
        assert_eq!(remove_stale_temp_files(&dir).unwrap(), 1);
        assert!(!dead.exists() && mine.exists() && other.exists());
        assert_eq!(temp_file_owner(".server-key.pem.123.tmp"), Some(123));
        assert_eq!(temp_file_owner(".hosts.app-side-shim.77.tmp"), Some(77));
        assert_eq!(temp_file_owner("state.json"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
