//! `app-side-shim run --metrics-listen ADDR`: `/healthz`, `/readyz` (the shim's listeners are
//! up and it has at least one hybrid connection to route to) and `/metrics`: tunnels opened,
//! failed, open and ended, and bytes each way, per hybrid connection (`namespace/path`).
//! The counters are process-wide, as the shim is one process.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use hc_process::observe::prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use hc_process::observe::{Health, registry_with_process};

/// The shim's counters.
#[derive(Debug)]
pub struct ShimMetrics {
    registry: Registry,
    tunnels: IntCounterVec,
    open: IntGaugeVec,
    closed: IntCounterVec,
    bytes: IntCounterVec,
    routes: IntGauge,
    started: AtomicBool,
}

/// The process's counters.
pub fn metrics() -> &'static ShimMetrics {
    static METRICS: OnceLock<ShimMetrics> = OnceLock::new();
    METRICS.get_or_init(ShimMetrics::new)
}

impl ShimMetrics {
    fn new() -> Self {
        let registry = registry_with_process();
        let tunnels = IntCounterVec::new(
            Opts::new(
                "shim_tunnels_total",
                "Connections the shim tried to tunnel, by outcome (opened, connect_failed: the relay or the listener refused or did not answer).",
            ),
            &["hybrid_connection", "outcome"],
        )
        .expect("valid metric");
        let open = IntGaugeVec::new(
            Opts::new("shim_tunnels_open", "Tunnels open now."),
            &["hybrid_connection"],
        )
        .expect("valid metric");
        let closed = IntCounterVec::new(
            Opts::new(
                "shim_tunnels_closed_total",
                "Tunnels that ended, by how (closed, aborted).",
            ),
            &["hybrid_connection", "outcome"],
        )
        .expect("valid metric");
        let bytes = IntCounterVec::new(
            Opts::new(
                "shim_tunnel_bytes_total",
                "Bytes carried by ended tunnels, by direction (to_endpoint: from the app; from_endpoint: to the app).",
            ),
            &["hybrid_connection", "direction"],
        )
        .expect("valid metric");
        let routes = IntGauge::with_opts(Opts::new(
            "shim_routes",
            "Hybrid connections the shim routes to (configured plus the app's).",
        ))
        .expect("valid metric");
        for c in [
            Box::new(tunnels.clone()) as Box<dyn hc_process::observe::prometheus::core::Collector>,
            Box::new(open.clone()),
            Box::new(closed.clone()),
            Box::new(bytes.clone()),
            Box::new(routes.clone()),
            Box::new(hc_process::observe::ReadCounters::new(
                "shim_warm_connections_total",
                hc_client::warm::METRIC_HELP,
                "outcome",
                || hc_client::warm::process_stats().by_outcome(),
            )),
        ] {
            let _ = registry.register(c);
        }
        ShimMetrics {
            registry,
            tunnels,
            open,
            closed,
            bytes,
            routes,
            started: AtomicBool::new(false),
        }
    }

    /// A tunnel to `hc` could not be opened.
    pub fn connect_failed(&self, hc: &str) {
        self.tunnels
            .with_label_values(&[hc, "connect_failed"])
            .inc();
    }

    /// A tunnel to `hc` opened.
    pub fn opened(&self, hc: &str) {
        self.tunnels.with_label_values(&[hc, "opened"]).inc();
        self.open.with_label_values(&[hc]).inc();
    }

    /// A tunnel to `hc` ended after carrying these bytes.
    pub fn ended(&self, hc: &str, to_endpoint: u64, from_endpoint: u64, aborted: bool) {
        self.open.with_label_values(&[hc]).dec();
        self.closed
            .with_label_values(&[hc, if aborted { "aborted" } else { "closed" }])
            .inc();
        self.bytes
            .with_label_values(&[hc, "to_endpoint"])
            .inc_by(to_endpoint);
        self.bytes
            .with_label_values(&[hc, "from_endpoint"])
            .inc_by(from_endpoint);
    }

    /// The shim routes to `n` hybrid connections now.
    pub fn set_routes(&self, n: usize) {
        self.routes.set(n as i64);
    }

    /// Every listener is up ("Ready.").
    pub fn set_started(&self) {
        self.started.store(true, Ordering::Release);
    }
}

impl Health for ShimMetrics {
    fn ready(&self) -> Result<(), Vec<String>> {
        let mut why = Vec::new();
        if !self.started.load(Ordering::Acquire) {
            why.push("the shim is still starting its listeners".to_owned());
        }
        if self.routes.get() == 0 {
            why.push("no hybrid connection to route to".to_owned());
        }
        if why.is_empty() { Ok(()) } else { Err(why) }
    }

    fn registry(&self) -> &Registry {
        &self.registry
    }
}
