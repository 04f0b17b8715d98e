//! `hcm run`: one worker per configured hybrid connection, a watcher that applies changes to
//! `connections.json` without a restart (new entries start, removed or changed ones stop,
//! the others and every live tunnel are left alone), the status writer, and shutdown: stop
//! accepting (control channels closed with 1000), then let live tunnels finish within a
//! grace period.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::{Config, Entry};
use crate::status::Board;
use crate::worker::{self, WorkerEnd, WorkerOptions};

/// How `hcm run` behaves.
#[derive(Debug, Clone)]
pub struct ServiceOptions {
    /// Data directory with `connections.json`.
    pub data_dir: PathBuf,
    /// Worker behaviour.
    pub worker: WorkerOptions,
    /// How long live tunnels may run on after a stop signal.
    pub grace: Duration,
    /// How often `connections.json` is checked for changes.
    pub reload_interval: Duration,
    /// Exit (with an error) when a hybrid connection fails for good, or stays disconnected
    /// longer than this.
    pub exit_on_failure: Option<Duration>,
    /// Serve `/healthz`, `/readyz` and `/metrics` here (printed as `Metrics: http://…`).
    pub metrics_listen: Option<std::net::SocketAddr>,
}

struct Running {
    entry: Entry,
    cancel: CancellationToken,
    task: JoinHandle<WorkerEnd>,
}

/// Serves until `shutdown` completes. Returns an error when `exit_on_failure` fired.
pub async fn run(
    options: ServiceOptions,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    if let Ok(n @ 1..) = hc_process::remove_stale_temp_files(&options.data_dir) {
        info!(
            removed = n,
            "removed temporary files left by an interrupted write"
        );
    }
    let board = Arc::new(Board::new(&options.data_dir));
    let stop_metrics = CancellationToken::new();
    if let Some(addr) = options.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("--metrics-listen {addr}: cannot listen"))?;
        let bound = listener.local_addr()?;
        board.set_metrics_address(bound);
        let health = Arc::new(crate::metrics::HcmHealth::new(board.clone()));
        tokio::spawn(hc_process::observe::serve(
            listener,
            health,
            stop_metrics.clone().cancelled_owned(),
        ));
        println!("Metrics: http://{bound}/metrics  (health: /healthz, /readyz)");
    }
    let tunnels = TaskTracker::new();
    let stop_writer = CancellationToken::new();
    let writer = tokio::spawn({
        let (board, stop) = (board.clone(), stop_writer.clone());
        async move { board.writer(stop).await }
    });
    let mut running: HashMap<String, Running> = HashMap::new();
    let mut last_config = None;
    let mut down_since = HashMap::new();
    let mut ticker = tokio::time::interval(options.reload_interval);
    tokio::pin!(shutdown);
    let outcome = loop {
        tokio::select! {
            _ = &mut shutdown => break Ok(()),
            _ = ticker.tick() => {
                match Config::load(&options.data_dir) {
                    Ok(config) if last_config.as_ref() != Some(&config) => {
                        apply(&config, &mut running, &board, &options, &tunnels);
                        last_config = Some(config);
                        board.set_loaded();
                    }
                    Ok(_) => {}
                    Err(e) => warn!(error = %format!("{e:#}"), "configuration not reloaded"),
                }
                if let Some(failure) = check_failures(&running, &board, options.exit_on_failure, &mut down_since) {
                    break Err(failure);
                }
            }
        }
    };
    info!(
        tunnels = tunnels.len(),
        grace_s = options.grace.as_secs_f32(),
        "stopping: closing control channels, letting live tunnels finish"
    );
    for (_, r) in running.drain() {
        r.cancel.cancel();
        let _ = r.task.await;
    }
    tunnels.close();
    if tokio::time::timeout(options.grace, tunnels.wait())
        .await
        .is_err()
    {
        warn!(
            remaining = tunnels.len(),
            "grace period over; dropping live tunnels"
        );
    }
    stop_writer.cancel();
    stop_metrics.cancel();
    let _ = writer.await;
    board.write(false);
    outcome
}

/// Starts, stops and restarts workers so that they match `config`.
fn apply(
    config: &Config,
    running: &mut HashMap<String, Running>,
    board: &Arc<Board>,
    options: &ServiceOptions,
    tunnels: &TaskTracker,
) {
    let wanted: HashMap<String, &Entry> = config.connections.iter().map(|e| (e.key(), e)).collect();
    let stale: Vec<String> = running
        .iter()
        .filter(|(k, r)| wanted.get(*k).is_none_or(|e| **e != r.entry))
        .map(|(k, _)| k.clone())
        .collect();
    for key in stale {
        if let Some(r) = running.remove(&key) {
            info!(hybrid_connection = %key, "removed from the configuration; stopping its listeners");
            r.cancel.cancel();
            board.remove(&key);
        }
    }
    for (key, entry) in wanted {
        if running.contains_key(&key) {
            continue;
        }
        info!(hybrid_connection = %key, "starting");
        // On the board at once, so /readyz counts it before its worker runs.
        board.update(&key, |s| s.channels_wanted = entry.listeners);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(worker::run(
            entry.clone(),
            board.clone(),
            options.worker.clone(),
            tunnels.clone(),
            cancel.clone(),
        ));
        running.insert(
            key,
            Running {
                entry: entry.clone(),
                cancel,
                task,
            },
        );
    }
}

/// With `exit_on_failure`: the first hybrid connection that gave up, or that has had no
/// open control channel for longer than the limit. `down_since` remembers when each went down.
fn check_failures(
    running: &HashMap<String, Running>,
    board: &Board,
    limit: Option<Duration>,
    down_since: &mut HashMap<String, u64>,
) -> Option<anyhow::Error> {
    let limit = limit?;
    let now = hc_client::now_unix();
    for key in running.keys() {
        let Some(status) = board.get(key) else {
            continue;
        };
        if status.state.is_permanent() {
            return Some(anyhow::anyhow!(
                "hybrid connection {key} failed: {}",
                status.last_error.unwrap_or_default()
            ));
        }
        if status.channels_open > 0 {
            down_since.remove(key);
            continue;
        }
        let since = *down_since.entry(key.clone()).or_insert(now);
        if now.saturating_sub(since) > limit.as_secs() {
            return Some(anyhow::anyhow!(
                "hybrid connection {key} has had no open control channel for more than {} s: {}",
                limit.as_secs(),
                status.last_error.unwrap_or_default()
            ));
        }
    }
    None
}
