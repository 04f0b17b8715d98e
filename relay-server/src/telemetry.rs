//! What the relay counts and what it can show: Prometheus metrics (counters updated where
//! things happen, live figures read at each scrape), the live tunnels and HTTP requests with
//! their byte counts, and the last refusals, for `/metrics` and the status page
//! ([`crate::status`]).
//!
//! Cost on the data path: a tunnel's byte counts are two relaxed atomics the pump already
//! kept; a tunnel is entered in and removed from one map when it opens and ends. Labels are
//! the names of existing namespaces and hybrid connections (lower-case), never text taken
//! from a refused request, so a client cannot grow the label set.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hc_process::observe::prometheus::core::{Collector, Desc};
use hc_process::observe::prometheus::proto::MetricFamily;
use hc_process::observe::prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
};
use hc_protocol::AuthError;
use serde::Serialize;

use crate::error::RelayError;
use crate::registry::{HcKey, lock};

/// Refusals kept for the status page.
pub(crate) const REFUSALS_KEPT: usize = 100;

/// Labels of a hybrid connection: its namespace and path, or empty strings when the request
/// named none that exists.
pub(crate) fn labels(key: Option<&HcKey>) -> [&str; 2] {
    key.map_or(["", ""], |k| [k.0.as_str(), k.1.as_str()])
}

/// `key`, or when the hybrid connection was not found, the namespace `host` names with an
/// empty hybrid connection (labels stay names that exist).
pub(crate) fn key_or_namespace(
    key: Option<HcKey>,
    store: &crate::store::Store,
    host: &str,
) -> Option<HcKey> {
    key.or_else(|| {
        store
            .read()
            .namespace_for_host(host)
            .map(|ns| (ns.name.to_ascii_lowercase(), String::new()))
    })
}

/// Where a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// A listener's control channel (`sb-hc-action=listen`).
    Listen,
    /// A sender's connect.
    Connect,
    /// A listener joining a rendezvous (`accept`, or an HTTP request's `request`).
    Accept,
    /// HTTP request mode.
    Http,
}

impl Stage {
    fn as_str(self) -> &'static str {
        match self {
            Stage::Listen => "listen",
            Stage::Connect => "connect",
            Stage::Accept => "accept",
            Stage::Http => "http",
        }
    }
}

/// A live tunnel as the status page and the metrics read it.
#[derive(Debug, Clone)]
pub(crate) struct TunnelView {
    /// The sender's TrackingId.
    pub tracking_id: String,
    /// Namespace and hybrid connection.
    pub hc: Arc<HcKey>,
    /// The sender's address as the relay saw it.
    pub sender: SocketAddr,
    /// The listener's rendezvous address as the relay saw it.
    pub listener: SocketAddr,
    /// Unix seconds when it opened.
    pub since: u64,
    /// Payload bytes from the sender to the listener so far.
    pub sender_to_listener: u64,
    /// Payload bytes from the listener to the sender so far.
    pub listener_to_sender: u64,
}

/// A socket address in 18 bytes (IPv4 as IPv4-mapped IPv6): live tunnels keep two.
#[derive(Debug, Clone, Copy)]
struct CompactAddr([u8; 16], [u8; 2]);

impl From<SocketAddr> for CompactAddr {
    fn from(a: SocketAddr) -> Self {
        let ip = match a.ip() {
            std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            std::net::IpAddr::V6(v6) => v6,
        };
        CompactAddr(ip.octets(), a.port().to_be_bytes())
    }
}

impl CompactAddr {
    fn get(self) -> SocketAddr {
        let ip = std::net::Ipv6Addr::from(self.0).to_canonical();
        SocketAddr::new(ip, u16::from_be_bytes(self.1))
    }
}

/// What a tunnel slot holds besides its byte counters (written when the tunnel opens).
#[derive(Debug)]
struct TunnelInfo {
    tracking_id: Box<str>,
    hc: Arc<HcKey>,
    sender: CompactAddr,
    listener: CompactAddr,
    since: u64,
}

/// Tunnel slots per arena page.
const PAGE_SLOTS: usize = 128;

/// A page of tunnel slots. Pages never move or shrink, so a tunnel's counters stay where the
/// pump adds to them, and a slot costs no allocation of its own (an idle tunnel's memory is
/// what the relay is measured by).
#[derive(Debug)]
struct Page {
    /// [sender→listener, listener→sender] per slot.
    bytes: Box<[[AtomicU64; 2]]>,
    /// A cut ordered by an injected fault ([`crate::fault::Cut::encode`], 0 for none).
    cut: Box<[AtomicU32]>,
    info: Mutex<Vec<Option<TunnelInfo>>>,
}

impl Page {
    fn new() -> Self {
        Page {
            bytes: (0..PAGE_SLOTS).map(|_| Default::default()).collect(),
            cut: (0..PAGE_SLOTS).map(|_| Default::default()).collect(),
            info: Mutex::new((0..PAGE_SLOTS).map(|_| None).collect()),
        }
    }
}

/// The live tunnels: pages of slots and the free ones.
#[derive(Debug, Default)]
struct Arena {
    pages: Vec<Arc<Page>>,
    free: Vec<(u32, u32)>,
    live: usize,
}

/// One HTTP-mode request waiting for its answer.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct HttpInFlight {
    /// The request's TrackingId.
    pub tracking_id: String,
    /// Namespace.
    pub namespace: String,
    /// Hybrid connection.
    pub hybrid_connection: String,
    /// Method.
    pub method: String,
    /// The client's address.
    pub client: String,
    /// Unix seconds when it arrived.
    pub since: u64,
}

/// A refused listener, sender or HTTP request.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Refusal {
    /// Unix seconds.
    pub at: u64,
    /// `listen`, `connect`, `accept` or `http`.
    pub kind: &'static str,
    /// Namespace, empty when the host named none.
    pub namespace: String,
    /// The path asked for (cut to 200 characters).
    pub path: String,
    /// The client's address.
    pub client: String,
    /// HTTP status sent.
    pub status: u16,
    /// The reason, as sent.
    pub reason: String,
    /// The TrackingId the client was given.
    pub tracking_id: String,
}

/// The relay's counters and live tables.
#[derive(Debug)]
pub(crate) struct Telemetry {
    /// Everything `/metrics` shows.
    pub registry: Registry,
    listen_attempts: IntCounterVec,
    connects: IntCounterVec,
    rendezvous: HistogramVec,
    http_requests: IntCounterVec,
    auth_failures: IntCounterVec,
    quota_refusals: IntCounterVec,
    tls_handshakes: IntCounterVec,
    live: Arc<Live>,
}

/// Live tables, shared with the scrape-time collector.
#[derive(Debug)]
pub(crate) struct Live {
    next: AtomicU64,
    tunnels: Mutex<Arena>,
    /// Tunnels that ended, by outcome (counted by their guards).
    tunnels_closed: IntCounterVec,
    /// Bytes of ended tunnels per hybrid connection: [sender→listener, listener→sender].
    closed_bytes: Mutex<HashMap<HcKey, [u64; 2]>>,
    http: Mutex<HashMap<u64, HttpInFlight>>,
    refusals: Mutex<VecDeque<Refusal>>,
    /// Moves on every change the status page shows.
    version: AtomicU64,
    /// One shared copy of each hybrid connection's names, for the live tunnels.
    names: Mutex<HashMap<HcKey, Arc<HcKey>>>,
}

impl Live {
    pub(crate) fn touch(&self) {
        self.version.fetch_add(1, Ordering::Relaxed);
    }

    /// A number that changes whenever a listener, tunnel, request or refusal comes or goes.
    pub(crate) fn version(&self) -> u64 {
        self.version.load(Ordering::Relaxed)
    }

    /// The live tunnels.
    pub(crate) fn tunnels(&self) -> Vec<TunnelView> {
        let pages = lock(&self.tunnels).pages.clone();
        let mut out = Vec::new();
        for page in pages {
            let info = lock(&page.info);
            for (slot, i) in info.iter().enumerate() {
                if let Some(i) = i {
                    let [up, down] = &page.bytes[slot];
                    out.push(TunnelView {
                        tracking_id: i.tracking_id.to_string(),
                        hc: i.hc.clone(),
                        sender: i.sender.get(),
                        listener: i.listener.get(),
                        since: i.since,
                        sender_to_listener: up.load(Ordering::Relaxed),
                        listener_to_sender: down.load(Ordering::Relaxed),
                    });
                }
            }
        }
        out
    }

    /// Whether any tunnel is live.
    pub(crate) fn has_tunnels(&self) -> bool {
        lock(&self.tunnels).live > 0
    }

    /// HTTP requests in flight.
    pub(crate) fn http(&self) -> Vec<HttpInFlight> {
        lock(&self.http).values().cloned().collect()
    }

    /// The last refusals, newest first.
    pub(crate) fn refusals(&self) -> Vec<Refusal> {
        lock(&self.refusals).iter().rev().cloned().collect()
    }
}

/// A live tunnel's slot: the pump adds to its counters; dropped, it frees the slot and adds
/// the tunnel's bytes to its hybrid connection's totals.
#[derive(Debug)]
pub(crate) struct TunnelGuard {
    live: Arc<Live>,
    page: Arc<Page>,
    at: (u32, u32),
}

impl TunnelGuard {
    /// The counters the pump adds to: [sender→listener, listener→sender].
    pub(crate) fn counters(&self) -> [&AtomicU64; 2] {
        let [up, down] = &self.page.bytes[self.at.1 as usize];
        [up, down]
    }

    /// A cut an injected fault ordered for this tunnel, taken.
    pub(crate) fn take_cut(&self) -> Option<crate::fault::Cut> {
        crate::fault::Cut::decode(self.page.cut[self.at.1 as usize].swap(0, Ordering::AcqRel))
    }

    /// The tunnel as the log describes it.
    pub(crate) fn view(&self) -> Option<TunnelView> {
        let slot = self.at.1 as usize;
        let info = lock(&self.page.info);
        let i = info[slot].as_ref()?;
        let [up, down] = self.counters();
        Some(TunnelView {
            tracking_id: i.tracking_id.to_string(),
            hc: i.hc.clone(),
            sender: i.sender.get(),
            listener: i.listener.get(),
            since: i.since,
            sender_to_listener: up.load(Ordering::Relaxed),
            listener_to_sender: down.load(Ordering::Relaxed),
        })
    }

    /// The tunnel ended (`aborted`: one side vanished or broke the framing, or shutdown).
    pub(crate) fn finish(self, aborted: bool) {
        let Some(hc) = lock(&self.page.info)[self.at.1 as usize]
            .as_ref()
            .map(|i| i.hc.clone())
        else {
            return;
        };
        self.live
            .tunnels_closed
            .with_label_values(&[
                hc.0.as_str(),
                hc.1.as_str(),
                if aborted { "aborted" } else { "closed" },
            ])
            .inc();
    }
}

impl Drop for TunnelGuard {
    fn drop(&mut self) {
        let slot = self.at.1 as usize;
        {
            // Closed totals first, then the page: the collector takes them in this order, so
            // a scrape counts the bytes either as live or as closed, never both or neither.
            let mut closed = lock(&self.live.closed_bytes);
            let mut info = lock(&self.page.info);
            if let Some(i) = info[slot].take() {
                let entry = closed.entry(HcKey::clone(&i.hc)).or_default();
                for (total, counter) in entry.iter_mut().zip(&self.page.bytes[slot]) {
                    *total += counter.swap(0, Ordering::Relaxed);
                }
            }
        }
        let mut arena = lock(&self.live.tunnels);
        arena.free.push(self.at);
        arena.live -= 1;
        drop(arena);
        self.live.touch();
    }
}

/// Removes its HTTP request from the in-flight table when dropped.
#[derive(Debug)]
pub(crate) struct HttpGuard {
    live: Arc<Live>,
    id: u64,
}

impl Drop for HttpGuard {
    fn drop(&mut self) {
        lock(&self.live.http).remove(&self.id);
        self.live.touch();
    }
}

/// The outcome label of a refused listen or connect, with its quota or auth detail.
pub(crate) fn outcome(e: &RelayError) -> &'static str {
    match e {
        RelayError::Auth(AuthError::MissingRight(_)) => "forbidden",
        RelayError::Auth(_) => "unauthorized",
        RelayError::TooManyListeners(_) | RelayError::TooManyConnections(_) => "quota",
        RelayError::Busy => "busy",
        RelayError::UnknownHost(_) | RelayError::EndpointNotFound => "not_found",
        RelayError::NoListeners | RelayError::NoListenersHttp(_) => "no_listener",
        RelayError::ListenerTimeout | RelayError::HttpTimeout => "timeout",
        RelayError::Rejected { .. } => "rejected",
        RelayError::SenderGone => "aborted",
        RelayError::RendezvousExpired => "expired",
        RelayError::ShuttingDown => "shutting_down",
        RelayError::BadRequest(_) | RelayError::RequestBodyTimeout => "bad_request",
        RelayError::Injected { .. } => "fault",
    }
}

fn auth_reason(e: &AuthError) -> &'static str {
    match e {
        AuthError::MissingToken => "missing_token",
        AuthError::Malformed(_) => "malformed_token",
        AuthError::InvalidSignature => "invalid_signature",
        AuthError::Expired(_) => "expired_token",
        AuthError::InvalidAudience => "invalid_audience",
        AuthError::MissingRight(_) => "missing_right",
    }
}

const HC: [&str; 2] = ["namespace", "hybrid_connection"];

impl Telemetry {
    /// Fresh counters, registered with the process figures and the live collector, which
    /// reads listener counts from `listeners` at each scrape.
    pub(crate) fn new(listeners: Arc<crate::registry::Registry>) -> Self {
        let registry = hc_process::observe::registry_with_process();
        let counter = |name: &str, help: &str, extra: &[&str]| {
            let mut names = HC.to_vec();
            names.extend_from_slice(extra);
            let c = IntCounterVec::new(Opts::new(name, help), &names).expect("valid metric");
            let _ = registry.register(Box::new(c.clone()));
            c
        };
        let listen_attempts = counter(
            "relay_listen_attempts_total",
            "Listener connection attempts, by outcome (accepted, unauthorized, forbidden, quota, not_found, bad_request, ...).",
            &["outcome"],
        );
        let connects = counter(
            "relay_tunnels_total",
            "Sender connection attempts, by outcome (accepted, rejected by the listener, no_listener, timeout, aborted by the sender, unauthorized, quota, ...) and the HTTP status sent (101 when accepted).",
            &["outcome", "status"],
        );
        let tunnels_closed = counter(
            "relay_tunnels_closed_total",
            "Tunnels that ended, by how (closed: both sides closed; aborted: one side vanished or broke the framing, or shutdown).",
            &["outcome"],
        );
        let http_requests = counter(
            "relay_http_requests_total",
            "HTTP-mode requests, by status sent and the path the answer took (control_channel, rendezvous, or relay when the relay answered itself).",
            &["status", "path"],
        );
        let auth = IntCounterVec::new(
            Opts::new(
                "relay_authentication_failures_total",
                "Refused tokens, by reason.",
            ),
            &["namespace", "reason"],
        )
        .expect("valid metric");
        let _ = registry.register(Box::new(auth.clone()));
        let quota = IntCounterVec::new(
            Opts::new(
                "relay_quota_refusals_total",
                "Refusals for a quota: listeners_per_hybrid_connection, connections_per_namespace or pending_rendezvous.",
            ),
            &["namespace", "quota"],
        )
        .expect("valid metric");
        let _ = registry.register(Box::new(quota.clone()));
        let tls_handshakes = IntCounterVec::new(
            Opts::new(
                "relay_tls_handshakes_total",
                "Completed TLS handshakes on the data plane, by kind: full, or resumed (a client's session ticket saved the certificate exchange).",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let _ = registry.register(Box::new(tls_handshakes.clone()));
        let rendezvous = HistogramVec::new(
            HistogramOpts::new(
                "relay_rendezvous_duration_seconds",
                "Time from a sender's connect to the listener's answer (accept or reject).",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ]),
            &HC,
        )
        .expect("valid metric");
        let _ = registry.register(Box::new(rendezvous.clone()));
        let live = Arc::new(Live {
            next: AtomicU64::new(0),
            tunnels: Mutex::default(),
            tunnels_closed,
            closed_bytes: Mutex::default(),
            http: Mutex::default(),
            refusals: Mutex::default(),
            version: AtomicU64::new(0),
            names: Mutex::default(),
        });
        let _ = registry.register(Box::new(LiveCollector::new(live.clone(), listeners)));
        Telemetry {
            registry,
            listen_attempts,
            connects,
            rendezvous,
            http_requests,
            auth_failures: auth,
            quota_refusals: quota,
            tls_handshakes,
            live,
        }
    }

    /// A TLS handshake completed, resumed or not.
    pub(crate) fn tls_handshake(&self, resumed: bool) {
        self.tls_handshakes
            .with_label_values(&[if resumed { "resumed" } else { "full" }])
            .inc();
    }

    /// The live tables.
    pub(crate) fn live(&self) -> &Arc<Live> {
        &self.live
    }

    /// A listener connected.
    pub(crate) fn listener_accepted(&self, hc: &HcKey) {
        self.listen_attempts
            .with_label_values(&[hc.0.as_str(), hc.1.as_str(), "accepted"])
            .inc();
        self.live.touch();
    }

    /// A listener left (the status page redraws).
    pub(crate) fn listener_left(&self) {
        self.live.touch();
    }

    /// A listen, connect or HTTP request was refused with `e`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn refused(
        &self,
        stage: Stage,
        key: Option<&HcKey>,
        e: &RelayError,
        host: &str,
        path: &str,
        client: SocketAddr,
        tracking_id: &str,
        now: u64,
    ) {
        let [ns, hc] = labels(key);
        match stage {
            Stage::Listen => self
                .listen_attempts
                .with_label_values(&[ns, hc, outcome(e)])
                .inc(),
            Stage::Connect => self
                .connects
                .with_label_values(&[ns, hc, outcome(e), &e.status().to_string()])
                .inc(),
            Stage::Accept | Stage::Http => {}
        }
        match e {
            RelayError::Auth(a) => self
                .auth_failures
                .with_label_values(&[ns, auth_reason(a)])
                .inc(),
            RelayError::TooManyListeners(_) => self
                .quota_refusals
                .with_label_values(&[ns, "listeners_per_hybrid_connection"])
                .inc(),
            RelayError::TooManyConnections(_) => self
                .quota_refusals
                .with_label_values(&[ns, "connections_per_namespace"])
                .inc(),
            RelayError::Busy => self
                .quota_refusals
                .with_label_values(&[ns, "pending_rendezvous"])
                .inc(),
            _ => {}
        }
        let reason = match e {
            RelayError::Rejected { description, .. } => description.clone(),
            other => other.to_string(),
        };
        let namespace = key.map_or_else(
            || crate::model::host_without_port(host).to_owned(),
            |k| k.0.clone(),
        );
        let mut refusals = lock(&self.live.refusals);
        if refusals.len() >= REFUSALS_KEPT {
            refusals.pop_front();
        }
        refusals.push_back(Refusal {
            at: now,
            kind: stage.as_str(),
            namespace: namespace.chars().take(200).collect(),
            path: path.chars().take(200).collect(),
            client: client.to_string(),
            status: e.status(),
            reason: reason.chars().take(500).collect(),
            tracking_id: tracking_id.to_owned(),
        });
        drop(refusals);
        self.live.touch();
    }

    /// A sender's connect was accepted after `waited` seconds; the tunnel is live until the
    /// guard drops.
    pub(crate) fn tunnel_opened(
        &self,
        hc: &HcKey,
        tracking_id: &str,
        sender: SocketAddr,
        listener: SocketAddr,
        waited: f64,
        now: u64,
    ) -> TunnelGuard {
        let [ns, name] = [hc.0.as_str(), hc.1.as_str()];
        self.connects
            .with_label_values(&[ns, name, "accepted", "101"])
            .inc();
        self.rendezvous
            .with_label_values(&[ns, name])
            .observe(waited);
        let hc = {
            let mut names = lock(&self.live.names);
            match names.get(hc) {
                Some(shared) => shared.clone(),
                None => {
                    let shared = Arc::new(hc.clone());
                    names.insert(hc.clone(), shared.clone());
                    shared
                }
            }
        };
        let (page, at) = {
            let mut arena = lock(&self.live.tunnels);
            arena.live += 1;
            let at = match arena.free.pop() {
                Some(at) => at,
                None => {
                    let page = arena.pages.len() as u32;
                    arena.pages.push(Arc::new(Page::new()));
                    arena
                        .free
                        .extend((1..PAGE_SLOTS as u32).rev().map(|slot| (page, slot)));
                    (page, 0)
                }
            };
            (arena.pages[at.0 as usize].clone(), at)
        };
        page.cut[at.1 as usize].store(0, Ordering::Release);
        lock(&page.info)[at.1 as usize] = Some(TunnelInfo {
            tracking_id: tracking_id.into(),
            hc,
            sender: sender.into(),
            listener: listener.into(),
            since: now,
        });
        self.live.touch();
        TunnelGuard {
            live: self.live.clone(),
            page,
            at,
        }
    }

    /// Orders `cut` for up to `budget` live tunnels that `select` picks (by hybrid connection
    /// and TrackingId); returns their hybrid connections.
    pub(crate) fn mark_cut(
        &self,
        cut: crate::fault::Cut,
        budget: u64,
        select: impl Fn(&HcKey, &str) -> bool,
    ) -> Vec<HcKey> {
        let pages = lock(&self.live.tunnels).pages.clone();
        let mut marked = Vec::new();
        for page in pages {
            let info = lock(&page.info);
            for (slot, i) in info.iter().enumerate() {
                if marked.len() as u64 >= budget {
                    return marked;
                }
                if let Some(i) = i
                    && select(&i.hc, &i.tracking_id)
                {
                    page.cut[slot].store(cut.encode(), Ordering::Release);
                    marked.push(HcKey::clone(&i.hc));
                }
            }
        }
        marked
    }

    /// A sender left while waiting for its listener.
    pub(crate) fn sender_left_waiting(&self, hc: &HcKey) {
        self.connects
            .with_label_values(&[hc.0.as_str(), hc.1.as_str(), "aborted", "none"])
            .inc();
    }

    /// The listener answered a connect with a rejection after `waited` seconds.
    pub(crate) fn rendezvous_answered(&self, hc: &HcKey, waited: f64) {
        self.rendezvous
            .with_label_values(&[hc.0.as_str(), hc.1.as_str()])
            .observe(waited);
    }

    /// An HTTP-mode request is in flight until the guard drops.
    pub(crate) fn http_started(&self, request: HttpInFlight) -> HttpGuard {
        let id = self.live.next.fetch_add(1, Ordering::Relaxed);
        lock(&self.live.http).insert(id, request);
        self.live.touch();
        HttpGuard {
            live: self.live.clone(),
            id,
        }
    }

    /// An HTTP-mode request was answered with `status` by way of `path`.
    pub(crate) fn http_answered(&self, key: Option<&HcKey>, status: u16, path: &str) {
        let [ns, hc] = labels(key);
        self.http_requests
            .with_label_values(&[ns, hc, &status.to_string(), path])
            .inc();
    }
}

/// Scrape-time figures: listeners connected, tunnels open and bytes each way (ended tunnels
/// plus what live ones carried so far).
#[derive(Debug)]
struct LiveCollector {
    live: Arc<Live>,
    listeners: Arc<crate::registry::Registry>,
    descs: Vec<Desc>,
}

fn listeners_vec() -> IntGaugeVec {
    IntGaugeVec::new(
        Opts::new(
            "relay_listeners",
            "Listeners connected (open control channels).",
        ),
        &HC,
    )
    .expect("valid metric")
}

fn tunnels_vec() -> IntGaugeVec {
    IntGaugeVec::new(Opts::new("relay_tunnels_open", "Tunnels open."), &HC).expect("valid metric")
}

fn bytes_vec() -> IntCounterVec {
    IntCounterVec::new(
        Opts::new(
            "relay_tunnel_bytes_total",
            "WebSocket payload bytes carried by tunnels, by direction (sender_to_listener, listener_to_sender).",
        ),
        &["namespace", "hybrid_connection", "direction"],
    )
    .expect("valid metric")
}

impl LiveCollector {
    fn new(live: Arc<Live>, listeners: Arc<crate::registry::Registry>) -> Self {
        let descs = [
            listeners_vec().desc(),
            tunnels_vec().desc(),
            bytes_vec().desc(),
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
        LiveCollector {
            live,
            listeners,
            descs,
        }
    }
}

impl Collector for LiveCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let (listeners, open, bytes) = (listeners_vec(), tunnels_vec(), bytes_vec());
        for (hc, n) in self.listeners.listener_counts() {
            listeners
                .with_label_values(&[hc.0.as_str(), hc.1.as_str()])
                .set(n as i64);
        }
        // The closed totals stay locked while the live tunnels are read (the order guards
        // take them in), so an ending tunnel's bytes are counted exactly once.
        let closed = lock(&self.live.closed_bytes);
        let mut totals = closed.clone();
        for t in self.live.tunnels() {
            open.with_label_values(&[t.hc.0.as_str(), t.hc.1.as_str()])
                .inc();
            let e = totals.entry(HcKey::clone(&t.hc)).or_default();
            e[0] += t.sender_to_listener;
            e[1] += t.listener_to_sender;
        }
        drop(closed);
        for (hc, [up, down]) in totals {
            bytes
                .with_label_values(&[hc.0.as_str(), hc.1.as_str(), "sender_to_listener"])
                .inc_by(up);
            bytes
                .with_label_values(&[hc.0.as_str(), hc.1.as_str(), "listener_to_sender"])
                .inc_by(down);
        }
        let mut out = listeners.collect();
        out.extend(open.collect());
        out.extend(bytes.collect());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_total(t: &Telemetry, direction: &str) -> f64 {
        t.registry
            .gather()
            .iter()
            .filter(|f| f.name() == "relay_tunnel_bytes_total")
            .flat_map(|f| f.get_metric().iter())
            .filter(|m| m.get_label().iter().any(|l| l.value() == direction))
            .map(|m| m.get_counter().get_value())
            .sum()
    }

    #[test]
    fn tunnel_slots_are_reused_and_bytes_counted_once() {
        let t = Telemetry::new(Arc::default());
        let hc: HcKey = ("ns".into(), "hc".into());
        let addr = |port| SocketAddr::from(([10, 0, 0, 1], port));
        let mut guards: Vec<TunnelGuard> = (0..300)
            .map(|i| t.tunnel_opened(&hc, &format!("id-{i}"), addr(i), addr(1000 + i), 0.001, 7))
            .collect();
        for g in &guards {
            let [up, down] = g.counters();
            up.fetch_add(10, Ordering::Relaxed);
            down.fetch_add(1, Ordering::Relaxed);
        }
        assert_eq!(bytes_total(&t, "sender_to_listener"), 3000.0);
        let ended: Vec<TunnelGuard> = guards.drain(..150).collect();
        for g in ended {
            g.finish(false);
        }
        assert_eq!(
            bytes_total(&t, "sender_to_listener"),
            3000.0,
            "ended or live, once"
        );
        assert_eq!(bytes_total(&t, "listener_to_sender"), 300.0);
        assert_eq!(t.live().tunnels().len(), 150);
        // Freed slots come back with zeroed counters.
        let again = t.tunnel_opened(&hc, "again", addr(1), addr(2), 0.0, 8);
        assert_eq!(again.counters()[0].load(Ordering::Relaxed), 0);
        let view = again.view().unwrap();
        assert_eq!(
            (view.tracking_id.as_str(), view.sender, view.since),
            ("again", addr(1), 8)
        );
        assert_eq!(
            lock(&t.live().tunnels).pages.len(),
            3,
            "300 tunnels, 128 a page"
        );
        drop(again);
        drop(guards);
        assert!(!t.live().has_tunnels());
        assert_eq!(bytes_total(&t, "sender_to_listener"), 3000.0);
    }

    #[test]
    fn compact_addresses_keep_v4_and_v6() {
        for a in ["10.1.2.3:443", "[::1]:9443", "[2001:db8::7]:1"] {
            let a: SocketAddr = a.parse().unwrap();
            assert_eq!(CompactAddr::from(a).get(), a);
        }
    }
}
