//! `hcm run --metrics-listen ADDR`: `/healthz`, `/readyz` (every configured hybrid connection
//! has an open control channel) and `/metrics`, read from the live [`Board`] at each scrape.

use std::sync::Arc;

use hc_process::observe::prometheus::core::{Collector, Desc};
use hc_process::observe::prometheus::proto::MetricFamily;
use hc_process::observe::prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use hc_process::observe::{Health, ReadCounters, registry_with_process};

use crate::status::{Board, State};

/// The HCM's health and metrics.
#[derive(Debug)]
pub struct HcmHealth {
    board: Arc<Board>,
    registry: Registry,
}

impl HcmHealth {
    /// Health and metrics of the service that keeps `board`.
    pub fn new(board: Arc<Board>) -> Self {
        let registry = registry_with_process();
        let _ = registry.register(Box::new(BoardCollector::new(board.clone())));
        let _ = registry.register(Box::new(ReadCounters::new(
            "hcm_warm_connections_total",
            hc_client::warm::METRIC_HELP,
            "outcome",
            || hc_client::warm::process_stats().by_outcome(),
        )));
        HcmHealth { board, registry }
    }
}

impl Health for HcmHealth {
    fn ready(&self) -> Result<(), Vec<String>> {
        if !self.board.loaded() {
            return Err(vec!["the configuration has not been read yet".to_owned()]);
        }
        let why: Vec<String> = self
            .board
            .all()
            .into_iter()
            .filter(|(_, s)| s.channels_open == 0)
            .map(|(key, s)| match &s.last_error {
                Some(e) => format!("{key}: no open control channel ({:?}: {e})", s.state),
                None => format!("{key}: no open control channel ({:?})", s.state),
            })
            .collect();
        if why.is_empty() { Ok(()) } else { Err(why) }
    }

    fn registry(&self) -> &Registry {
        &self.registry
    }
}

const HC: [&str; 1] = ["hybrid_connection"];

fn gauges() -> Vec<IntGaugeVec> {
    [
        ("hcm_control_channels_open", "Control channels open to the relay."),
        ("hcm_control_channels_wanted", "Control channels configured."),
        ("hcm_connected", "1 when at least one control channel is open, else 0."),
        ("hcm_relay_listeners", "Listeners the relay reports for the hybrid connection (all HCMs), refreshed periodically."),
        ("hcm_tunnels_open", "Tunnels open now."),
        ("hcm_endpoint_reachable", "1 when the endpoint accepted the last connection attempt, 0 when it did not."),
    ]
    .into_iter()
    .map(|(name, help)| IntGaugeVec::new(Opts::new(name, help), &HC).expect("valid metric"))
    .collect()
}

fn counters() -> Vec<IntCounterVec> {
    [
        ("hcm_control_channel_connects_total", "Control channels opened (first connections and reconnects)."),
        ("hcm_control_channel_losses_total", "Open control channels lost (each followed by a reconnect)."),
        ("hcm_control_channel_failures_total", "Failed attempts to open a control channel."),
        ("hcm_token_renewals_total", "renewToken commands sent."),
        ("hcm_endpoint_dial_failures_total", "Connections to the endpoint that failed."),
        ("hcm_tunnels_total", "Tunnels opened (endpoint dialled and rendezvous joined)."),
        ("hcm_tunnels_failed_total", "Accepted connections that could not be served (endpoint down, rendezvous failed, at the tunnel limit)."),
    ]
    .into_iter()
    .map(|(name, help)| IntCounterVec::new(Opts::new(name, help), &HC).expect("valid metric"))
    .collect()
}

fn bytes() -> IntCounterVec {
    IntCounterVec::new(
        Opts::new(
            "hcm_tunnel_bytes_total",
            "Bytes carried by ended tunnels, by direction (to_endpoint, from_endpoint).",
        ),
        &["hybrid_connection", "direction"],
    )
    .expect("valid metric")
}

/// Reads the board at each scrape.
#[derive(Debug)]
struct BoardCollector {
    board: Arc<Board>,
    descs: Vec<Desc>,
}

impl BoardCollector {
    fn new(board: Arc<Board>) -> Self {
        let mut descs = Vec::new();
        for g in gauges() {
            descs.extend(g.desc().into_iter().cloned());
        }
        for c in counters() {
            descs.extend(c.desc().into_iter().cloned());
        }
        descs.extend(bytes().desc().into_iter().cloned());
        BoardCollector { board, descs }
    }
}

impl Collector for BoardCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let (g, c, b) = (gauges(), counters(), bytes());
        for (key, s) in self.board.all() {
            let l = [key.as_str()];
            g[0].with_label_values(&l).set(i64::from(s.channels_open));
            g[1].with_label_values(&l).set(i64::from(s.channels_wanted));
            g[2].with_label_values(&l).set(i64::from(
                s.state == State::Connected || s.channels_open > 0,
            ));
            if let Some(n) = s.relay_listener_count {
                g[3].with_label_values(&l).set(n as i64);
            }
            g[4].with_label_values(&l).set(s.tunnels_active as i64);
            if let Some(up) = s.endpoint_reachable {
                g[5].with_label_values(&l).set(i64::from(up));
            }
            for (counter, value) in c.iter().zip([
                s.connects,
                s.channel_losses,
                s.connect_failures,
                s.token_renewals,
                s.endpoint_dial_failures,
                s.tunnels_total,
                s.tunnels_failed,
            ]) {
                counter.with_label_values(&l).inc_by(value);
            }
            b.with_label_values(&[key.as_str(), "to_endpoint"])
                .inc_by(s.bytes_to_endpoint);
            b.with_label_values(&[key.as_str(), "from_endpoint"])
                .inc_by(s.bytes_from_endpoint);
        }
        let mut out: Vec<MetricFamily> = g.iter().flat_map(Collector::collect).collect();
        out.extend(c.iter().flat_map(Collector::collect));
        out.extend(b.collect());
        out
    }
}
