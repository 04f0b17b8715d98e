//! What the running service knows about each hybrid connection, shared by its tasks and
//! written to `{data-dir}/status.json` (atomically, at most every 200 ms when something
//! changed) so that `hcm list` and `hcm show` can report it.
//!
//! "Connected" means at least one control channel is open. The status also says whether the
//! endpoint answered at the last attempt and when, since a listener can be connected while
//! its endpoint is down.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

/// File name of the status.
pub const STATUS_FILE: &str = "status.json";

/// State of one hybrid connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum State {
    /// Starting, or between attempts.
    #[default]
    Connecting,
    /// At least one control channel is open.
    Connected,
    /// No control channel is open; retrying.
    Disconnected,
    /// The relay refused a control channel for quota (403 `QuotaExceeded`: too many
    /// listeners on the hybrid connection or connections in the namespace); retrying.
    QuotaExceeded,
    /// The hybrid connection does not exist (404); not retrying.
    NotFound,
    /// The key was refused (401/403); not retrying.
    Unauthorized,
    /// A configuration problem (bad metadata, bad CA file); not retrying.
    Failed,
    /// Stopped (service shutting down or entry removed).
    Stopped,
}

impl State {
    /// Whether the worker gave up.
    pub fn is_permanent(self) -> bool {
        matches!(self, State::NotFound | State::Unauthorized | State::Failed)
    }
}

/// Status of one hybrid connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HcStatus {
    /// Current state.
    pub state: State,
    /// Control channels open now.
    pub channels_open: u32,
    /// Control channels configured.
    pub channels_wanted: u32,
    /// The endpoint in use (`host:port`).
    pub endpoint: Option<String>,
    /// Where the endpoint came from: `userMetadata` or `override`.
    pub endpoint_source: Option<String>,
    /// Whether the endpoint accepted the last TCP connection attempt.
    pub endpoint_reachable: Option<bool>,
    /// When that attempt was, Unix seconds.
    pub endpoint_checked_at: Option<u64>,
    /// Why the last attempt failed.
    pub endpoint_error: Option<String>,
    /// Listeners on the relay for this hybrid connection, from runtime info.
    pub relay_listener_count: Option<usize>,
    /// Since when a channel has been open, Unix seconds.
    pub connected_since: Option<u64>,
    /// Last error from the relay side.
    pub last_error: Option<String>,
    /// Control channel (re)connections made.
    pub connects: u64,
    /// Control channels lost after being open (each is followed by a reconnect).
    pub channel_losses: u64,
    /// Failed attempts to open a control channel.
    pub connect_failures: u64,
    /// `renewToken` commands sent.
    pub token_renewals: u64,
    /// Connections to the endpoint that failed (refused, unreachable, timed out).
    pub endpoint_dial_failures: u64,
    /// Tunnels open now.
    pub tunnels_active: u64,
    /// Tunnels opened in total.
    pub tunnels_total: u64,
    /// Connections that could not be served (endpoint down, rendezvous failed).
    pub tunnels_failed: u64,
    /// Bytes sent to the endpoint.
    pub bytes_to_endpoint: u64,
    /// Bytes received from the endpoint.
    pub bytes_from_endpoint: u64,
}

/// The status file's content.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusFile {
    /// Process id of the service.
    pub pid: u32,
    /// Whether the service is running (false after a clean stop).
    pub running: bool,
    /// Last write, Unix seconds.
    pub updated_at: u64,
    /// Per hybrid connection (`namespace/name`).
    pub connections: BTreeMap<String, HcStatus>,
    /// Where `/healthz`, `/readyz` and `/metrics` are served (`hcm run --metrics-listen`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_address: Option<String>,
}

impl StatusFile {
    /// Reads the status file if a live service wrote it.
    pub fn read_live(dir: &Path) -> Option<StatusFile> {
        let bytes = std::fs::read(dir.join(STATUS_FILE)).ok()?;
        let status: StatusFile = serde_json::from_slice(&bytes).ok()?;
        (status.running && process_alive(status.pid)).then_some(status)
    }
}

fn process_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        Path::new(&format!("/proc/{pid}")).exists()
    } else {
        true
    }
}

/// The live status, shared by the service's tasks.
#[derive(Debug)]
pub struct Board {
    connections: Mutex<BTreeMap<String, HcStatus>>,
    metrics_address: Mutex<Option<String>>,
    loaded: std::sync::atomic::AtomicBool,
    changed: Notify,
    path: PathBuf,
}

impl Board {
    /// A board that writes to `{dir}/status.json`.
    pub fn new(dir: &Path) -> Self {
        Board {
            connections: Mutex::default(),
            metrics_address: Mutex::default(),
            loaded: Default::default(),
            changed: Notify::new(),
            path: dir.join(STATUS_FILE),
        }
    }

    /// Changes the status of `key` and schedules a write.
    pub fn update(&self, key: &str, change: impl FnOnce(&mut HcStatus)) {
        {
            let mut all = self.connections.lock().unwrap_or_else(|p| p.into_inner());
            change(all.entry(key.to_owned()).or_default());
        }
        self.changed.notify_one();
    }

    /// Forgets `key` (entry removed).
    pub fn remove(&self, key: &str) {
        self.connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
        self.changed.notify_one();
    }

    /// A copy of every status.
    pub fn all(&self) -> BTreeMap<String, HcStatus> {
        self.connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The configuration has been read and its workers started.
    pub fn set_loaded(&self) {
        self.loaded
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether [`Board::set_loaded`] was called.
    pub fn loaded(&self) -> bool {
        self.loaded.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Records where the metrics are served (written to the status file).
    pub fn set_metrics_address(&self, addr: std::net::SocketAddr) {
        *self
            .metrics_address
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(addr.to_string());
        self.changed.notify_one();
    }

    /// A copy of one status.
    pub fn get(&self, key: &str) -> Option<HcStatus> {
        self.connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    /// Writes the file now.
    pub fn write(&self, running: bool) {
        let connections = self
            .connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let file = StatusFile {
            pid: std::process::id(),
            running,
            updated_at: hc_client::now_unix(),
            connections,
            metrics_address: self
                .metrics_address
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        };
        if let Ok(json) = serde_json::to_vec_pretty(&file)
            && let Err(e) = crate::write_atomically(&self.path, &json)
        {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot write status file");
        }
    }

    /// Writes the file whenever something changed, at most every 200 ms, until cancelled.
    pub async fn writer(&self, cancel: tokio_util::sync::CancellationToken) {
        self.write(true);
        loop {
            tokio::select! {
                _ = self.changed.notified() => {}
                _ = cancel.cancelled() => return,
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            self.write(true);
        }
    }
}
