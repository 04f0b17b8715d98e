//! Fault injection: the relay misbehaves on purpose, scoped to a namespace or one hybrid
//! connection, for a duration or a number of times, so users can test what their app, HCM
//! and listeners do when Azure Relay drops listeners, refuses connects, answers slowly,
//! expires tokens early or cuts live tunnels.
//!
//! A fault is a [`FaultSpec`] (the same shape in the REST API's JSON, the config file, the
//! `relay-server fault add` flags and the Rust API). It is one of two sorts:
//!
//! - **Actions** (`dropListeners`, `expireTokens`, `cutTunnels` without `afterBytes`) act at
//!   once on what is live and matches. With `durationSeconds` or `count` they stay and also
//!   act on what arrives while they last (listeners that join, renewals, tunnels that open);
//!   without either they end as soon as they acted.
//! - **Conditions** (everything else) change how the relay answers while they are active:
//!   until `durationSeconds` pass, `count` applications are used up, or they are cleared.
//!
//! `everyNth` makes a refusal or delay apply to every Nth matching event only. Clearing a
//! fault restores normal service at once; nothing needs a restart.
//!
//! Live control channels and tunnels watch one generation counter and look again at what
//! applies to them when it moves; listeners find their actions in their registry entry,
//! tunnels in their telemetry slot. With no fault active,
//! each check is one atomic load.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hc_process::observe::prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use hc_protocol::frame::close_code;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::registry::{HcKey, lock};
use crate::state::RelayState;

/// The file in a data directory that holds the URL of the relay serving it (written at
/// start by `relay-server` and `up`): `relay-server fault` finds the relay through it.
pub const URL_FILE: &str = "relay-url";

/// The URL clients on this machine use for a relay bound to `bound`.
pub fn relay_url(bound: std::net::SocketAddr, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    let ip = bound.ip();
    if ip.is_loopback() || ip.is_unspecified() {
        format!("{scheme}://localhost:{}", bound.port())
    } else {
        format!("{scheme}://{bound}")
    }
}

/// Writes [`URL_FILE`] into `data_dir` for a relay bound to `bound`.
pub fn write_url_file(
    data_dir: &std::path::Path,
    bound: std::net::SocketAddr,
    tls: bool,
) -> std::io::Result<()> {
    let url = relay_url(bound, tls);
    hc_process::write_atomically(&data_dir.join(URL_FILE), format!("{url}\n").as_bytes())
}

/// Longest duration a fault may be given (a week).
const MAX_DURATION_SECONDS: f64 = 7.0 * 24.0 * 3600.0;
/// Longest injected delay (an hour).
const MAX_DELAY_MS: u64 = 3_600_000;
/// Ended faults kept for `GET /$faults`.
const ENDED_KEPT: usize = 50;
/// Faults active at once (each one is checked on every matching event).
pub const MAX_ACTIVE_FAULTS: usize = 100;
/// Longest reason text.
const MAX_REASON: usize = 200;

/// What a fault does. In JSON the names are camelCase (`refuseConnects`), on the command line
/// kebab-case (`refuse-connects`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "camelCase")]
pub enum FaultKind {
    /// Close listeners' control channels with `closeCode` (1001, 1008, 1011, ...), or drop
    /// their TCP connections without a Close when no code is given.
    DropListeners,
    /// Refuse senders' connects with `status` and `reason`.
    RefuseConnects,
    /// Refuse listeners' listen requests with `status` and `reason`.
    RefuseListens,
    /// Hold the `accept` sent to a listener for `delayMs`.
    DelayAccept,
    /// Hold the relay's answer to the sender for `delayMs` after the listener accepted.
    DelayRendezvous,
    /// Stop serving control channels without closing them: no `accept`, no request, no ping,
    /// no Pong, nothing read (a relay that hangs).
    StallControl,
    /// Treat listeners' tokens as expired now (their channels close with 1008 after the
    /// grace period unless renewed) and, while active, refuse `renewToken`.
    ExpireTokens,
    /// Close (`mode: close`, with `closeCode`) or drop (`mode: reset`) live tunnels: all that
    /// match, the one with `trackingId`, or each once it has carried `afterBytes`.
    CutTunnels,
    /// Add `latencyMs` to each direction of tunnels and cap their rate per direction.
    ShapeTunnels,
    /// Answer HTTP-mode requests with `status` instead of reaching the listener.
    HttpStatus,
    /// Let HTTP-mode requests time out (504 after the HTTP timeout) instead of reaching the
    /// listener.
    HttpTimeout,
}

impl FaultKind {
    /// The JSON name.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::DropListeners => "dropListeners",
            FaultKind::RefuseConnects => "refuseConnects",
            FaultKind::RefuseListens => "refuseListens",
            FaultKind::DelayAccept => "delayAccept",
            FaultKind::DelayRendezvous => "delayRendezvous",
            FaultKind::StallControl => "stallControl",
            FaultKind::ExpireTokens => "expireTokens",
            FaultKind::CutTunnels => "cutTunnels",
            FaultKind::ShapeTunnels => "shapeTunnels",
            FaultKind::HttpStatus => "httpStatus",
            FaultKind::HttpTimeout => "httpTimeout",
        }
    }

    const ALL: [FaultKind; 11] = [
        FaultKind::DropListeners,
        FaultKind::RefuseConnects,
        FaultKind::RefuseListens,
        FaultKind::DelayAccept,
        FaultKind::DelayRendezvous,
        FaultKind::StallControl,
        FaultKind::ExpireTokens,
        FaultKind::CutTunnels,
        FaultKind::ShapeTunnels,
        FaultKind::HttpStatus,
        FaultKind::HttpTimeout,
    ];
}

/// How `cutTunnels` ends a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "camelCase")]
pub enum CutMode {
    /// Send both sides a Close (`closeCode`, default 1011), then close TCP.
    Close,
    /// Drop both TCP connections without a Close.
    Reset,
}

/// One fault as users write it: JSON (`POST /$faults`, the config file's `faults`), the
/// flags of `relay-server fault add`, or Rust ([`crate::Relay::add_fault`]). Fields that do
/// not apply to the kind are refused by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultSpec {
    /// What the fault does.
    #[arg(value_enum)]
    pub kind: FaultKind,
    /// Only this namespace (all namespaces when absent).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Only this hybrid connection (in the namespace, or in any namespace).
    #[arg(long, visible_alias = "hc")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hybrid_connection: Option<String>,
    /// Active for this many seconds.
    #[arg(long, value_name = "SECONDS", visible_alias = "duration")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<f64>,
    /// Applies this many times, then ends.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Refusals and delays: applies to every Nth matching event only.
    #[arg(long, value_name = "N")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every_nth: Option<u64>,
    /// refuseConnects, refuseListens, httpStatus: the HTTP status (400-599).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The reason phrase of a refusal or the reason of a Close.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// dropListeners, cutTunnels (close mode): the WebSocket close code.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub close_code: Option<u16>,
    /// delayAccept, delayRendezvous: milliseconds.
    #[arg(long, value_name = "MS")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// cutTunnels: close (default) or reset.
    #[arg(long, value_enum)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<CutMode>,
    /// cutTunnels: only the tunnel with this TrackingId.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracking_id: Option<String>,
    /// cutTunnels: cut each tunnel once it carried this many payload bytes (both ways).
    #[arg(long, value_name = "BYTES")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_bytes: Option<u64>,
    /// shapeTunnels: milliseconds added to each direction.
    #[arg(long, value_name = "MS")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// shapeTunnels: rate cap of each direction, bytes per second.
    #[arg(long, value_name = "BYTES")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_per_second: Option<u64>,
    /// shapeTunnels: rate cap from the sender to the listener (overrides bytesPerSecond).
    #[arg(long, value_name = "BYTES")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_to_listener_bytes_per_second: Option<u64>,
    /// shapeTunnels: rate cap from the listener to the sender (overrides bytesPerSecond).
    #[arg(long, value_name = "BYTES")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener_to_sender_bytes_per_second: Option<u64>,
}

impl FaultSpec {
    /// A fault of `kind` on every namespace, with no other field set.
    pub fn new(kind: FaultKind) -> Self {
        FaultSpec {
            kind,
            namespace: None,
            hybrid_connection: None,
            duration_seconds: None,
            count: None,
            every_nth: None,
            status: None,
            reason: None,
            close_code: None,
            delay_ms: None,
            mode: None,
            tracking_id: None,
            after_bytes: None,
            latency_ms: None,
            bytes_per_second: None,
            sender_to_listener_bytes_per_second: None,
            listener_to_sender_bytes_per_second: None,
        }
    }

    /// Only `hybrid_connection` of `namespace`.
    pub fn on(mut self, namespace: &str, hybrid_connection: &str) -> Self {
        self.namespace = Some(namespace.into());
        self.hybrid_connection = Some(hybrid_connection.into());
        self
    }

    /// Names of the fields that are set, beyond `kind` and the scope.
    fn set_fields(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        let mut note = |set: bool, name| {
            if set {
                out.push(name)
            }
        };
        note(self.every_nth.is_some(), "everyNth");
        note(self.status.is_some(), "status");
        note(self.reason.is_some(), "reason");
        note(self.close_code.is_some(), "closeCode");
        note(self.delay_ms.is_some(), "delayMs");
        note(self.mode.is_some(), "mode");
        note(self.tracking_id.is_some(), "trackingId");
        note(self.after_bytes.is_some(), "afterBytes");
        note(self.latency_ms.is_some(), "latencyMs");
        note(self.bytes_per_second.is_some(), "bytesPerSecond");
        note(
            self.sender_to_listener_bytes_per_second.is_some(),
            "senderToListenerBytesPerSecond",
        );
        note(
            self.listener_to_sender_bytes_per_second.is_some(),
            "listenerToSenderBytesPerSecond",
        );
        note(self.count.is_some(), "count");
        out
    }
}

/// A fault as the relay reports it: the spec, normalized, with its id and what it did.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultInfo {
    /// `f1`, `f2`, ... (unique for the relay's life).
    pub id: String,
    /// The fault as given (names lower-case, defaults filled in).
    #[serde(flatten)]
    pub spec: FaultSpec,
    /// Still acting.
    pub active: bool,
    /// Times it applied: listeners dropped, connects refused, accepts delayed, channels
    /// stalled, tokens expired or renewals refused, tunnels cut or shaped, requests answered.
    pub applied: u64,
    /// Unix seconds when it was added.
    pub created_at: u64,
    /// Unix seconds when its duration ends.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// Applications left before it ends, when it has a count.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remaining: Option<u64>,
    /// Why it ended (`duration`, `count`, `cleared`, `acted`), once it has.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended: Option<String>,
}

/// Why a fault was not added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FaultError {
    /// The spec is malformed or inconsistent; the text names the field.
    #[error("{0}")]
    Invalid(String),
    /// The namespace, hybrid connection or tunnel it names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// Too many faults are active.
    #[error("{MAX_ACTIVE_FAULTS} faults are active already; clear some first")]
    TooMany,
}

impl FaultError {
    /// The HTTP status the REST API answers with.
    pub fn status(&self) -> u16 {
        match self {
            FaultError::Invalid(_) => 400,
            FaultError::NotFound(_) => 404,
            FaultError::TooMany => 409,
        }
    }
}

/// How a tunnel is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cut {
    /// Close frames with this code to both sides, then TCP closed.
    Close(u16),
    /// TCP dropped without a Close.
    Reset,
}

impl Cut {
    /// As a telemetry slot holds it (0 = none).
    pub(crate) fn encode(self) -> u32 {
        match self {
            Cut::Close(code) => u32::from(code),
            Cut::Reset => 1,
        }
    }

    /// From a telemetry slot.
    pub(crate) fn decode(v: u32) -> Option<Cut> {
        match v {
            0 => None,
            1 => Some(Cut::Reset),
            code => u16::try_from(code).ok().map(Cut::Close),
        }
    }
}

/// Shaping of one tunnel: latency each way and rate caps (sender→listener, listener→sender).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Shape {
    /// Added to each direction.
    pub latency: Duration,
    /// Bytes per second, `None` for no cap: [sender→listener, listener→sender].
    pub rate: [Option<u64>; 2],
}

/// What faults ask of one tunnel now. A fault with a count counts the tunnels it binds when
/// they open (`kept_*`): they keep its cut or shape after the count is used up, until they
/// end or faults are cleared (`clears` moved).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct TunnelFaults {
    /// End it now.
    pub cut_now: Option<Cut>,
    /// End it once this many payload bytes passed (both ways together).
    pub cut_after: Option<(u64, Cut)>,
    /// Delay and cap its bytes.
    pub shape: Option<Shape>,
    /// `cut_after` came from a fault with a count.
    pub kept_cut_after: bool,
    /// `shape` came from a fault with a count.
    pub kept_shape: bool,
    /// [`Faults::clears`] when this was worked out.
    pub clears: u64,
}

impl TunnelFaults {
    /// What applies now (`self`), plus what a counted fault gave the tunnel when it opened
    /// (`at_open`), unless faults were cleared since.
    pub(crate) fn keeping(mut self, at_open: &TunnelFaults) -> TunnelFaults {
        if self.clears == at_open.clears {
            if self.cut_after.is_none() && at_open.kept_cut_after {
                self.cut_after = at_open.cut_after;
            }
            if self.shape.is_none() && at_open.kept_shape {
                self.shape = at_open.shape;
            }
        }
        self
    }
}

/// What a listener's control channel is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ListenerFault {
    /// Close with this code and reason, or drop TCP when `None`.
    Drop(Option<(u16, String)>),
    /// Its token counts as expired from now.
    Expire,
}

/// What an HTTP-mode request meets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HttpFault {
    /// This status and reason.
    Status(u16, String),
    /// No answer until the HTTP timeout.
    Timeout,
}

/// The checked form of a spec.
#[derive(Debug, Clone)]
enum Effect {
    Drop(Option<(u16, String)>),
    Refuse {
        listen: bool,
        status: u16,
        reason: String,
    },
    DelayAccept(Duration),
    DelayAnswer(Duration),
    Stall,
    Expire,
    Cut {
        cut: Cut,
        tracking_id: Option<String>,
        after_bytes: Option<u64>,
    },
    Shape(Shape),
    HttpStatus(u16, String),
    HttpTimeout,
}

/// One fault while it lives.
#[derive(Debug)]
struct Active {
    id: u64,
    spec: FaultSpec,
    effect: Effect,
    created_at: u64,
    expires_at: Option<u64>,
    until: Option<Instant>,
    remaining: Option<u64>,
    every: u64,
    seen: u64,
    applied: u64,
    /// Acts on arrivals (conditions always; actions with a duration or count).
    lasting: bool,
}

impl Active {
    fn covers(&self, hc: &HcKey) -> bool {
        self.spec.namespace.as_ref().is_none_or(|n| *n == hc.0)
            && self
                .spec
                .hybrid_connection
                .as_ref()
                .is_none_or(|h| *h == hc.1)
    }

    fn live(&self, now: Instant) -> bool {
        self.until.is_none_or(|u| u > now) && self.remaining != Some(0)
    }

    fn info(&self, ended: Option<&str>) -> FaultInfo {
        FaultInfo {
            id: format!("f{}", self.id),
            spec: self.spec.clone(),
            active: ended.is_none(),
            applied: self.applied,
            created_at: self.created_at,
            expires_at: self.expires_at,
            remaining: self.remaining,
            ended: ended.map(str::to_owned),
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    active: Vec<Active>,
    ended: VecDeque<FaultInfo>,
    next_id: u64,
}

/// Every fault of one relay.
#[derive(Debug)]
pub(crate) struct Faults {
    /// Whether any fault is active: the only thing the hot paths read when none is.
    any: AtomicBool,
    inner: Mutex<Inner>,
    /// Moves whenever a fault is added or ends.
    changed: watch::Sender<u64>,
    active_gauge: IntGaugeVec,
    applications: IntCounterVec,
    /// Moves at every clear of all namespaces.
    clears_all: std::sync::atomic::AtomicU64,
    /// Moves at every clear limited to one namespace (a Manage token's), by namespace: one
    /// tenant's clear never lifts what another's faults left on its tunnels.
    clears_in: Mutex<std::collections::HashMap<String, u64>>,
}

impl Faults {
    /// No faults; their metrics registered with `registry`.
    pub(crate) fn new(registry: &Registry) -> Self {
        let active_gauge = IntGaugeVec::new(
            Opts::new(
                "relay_faults_active",
                "Injected faults active now, by kind.",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let applications = IntCounterVec::new(
            Opts::new(
                "relay_fault_applications_total",
                "Times an injected fault applied, by kind and hybrid connection.",
            ),
            &["kind", "namespace", "hybrid_connection"],
        )
        .expect("valid metric");
        let _ = registry.register(Box::new(active_gauge.clone()));
        let _ = registry.register(Box::new(applications.clone()));
        for kind in FaultKind::ALL {
            active_gauge.with_label_values(&[kind.as_str()]).set(0);
        }
        Faults {
            any: AtomicBool::new(false),
            inner: Mutex::default(),
            changed: watch::Sender::new(0),
            active_gauge,
            applications,
            clears_all: Default::default(),
            clears_in: Mutex::default(),
        }
    }

    /// Whether any fault is active.
    pub(crate) fn any(&self) -> bool {
        self.any.load(Ordering::Acquire)
    }

    /// A receiver that wakes whenever faults change.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// A number that moves whenever faults change (the status page's event stream).
    pub(crate) fn generation(&self) -> u64 {
        *self.changed.borrow()
    }

    fn bump(&self) {
        self.changed.send_modify(|g| *g += 1);
    }

    /// Moves faults that ran out of time or count to the ended list; the caller holds the lock.
    fn retire_spent(&self, inner: &mut Inner, now: Instant) -> bool {
        let mut changed = false;
        let mut i = 0;
        while i < inner.active.len() {
            let f = &inner.active[i];
            if f.live(now) {
                i += 1;
                continue;
            }
            let why = if f.remaining == Some(0) {
                "count"
            } else {
                "duration"
            };
            let f = self.take_active(inner, i);
            inner.record_ended(f.info(Some(why)));
            changed = true;
        }
        self.any.store(!inner.active.is_empty(), Ordering::Release);
        changed
    }

    /// Ends faults whose time is up (called by their timers).
    fn expire_due(&self) {
        let changed = {
            let mut inner = lock(&self.inner);
            self.retire_spent(&mut inner, Instant::now())
        };
        if changed {
            self.bump();
        }
    }

    /// The first lasting fault covering `hc` for which `pick` returns something, counted as
    /// applied when its `everyNth` turn has come (`count` false: just looking).
    fn apply<T>(&self, hc: &HcKey, count: bool, pick: impl Fn(&Active) -> Option<T>) -> Option<T> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        let now = Instant::now();
        let mut inner = lock(&self.inner);
        let mut found = None;
        for f in inner.active.iter_mut() {
            if !f.lasting || !f.live(now) || !f.covers(hc) {
                continue;
            }
            let Some(v) = pick(f) else { continue };
            if !count {
                found = Some(v);
                break;
            }
            f.seen += 1;
            if f.seen % f.every != 0 {
                continue;
            }
            f.applied += 1;
            if let Some(left) = f.remaining.as_mut() {
                *left = left.saturating_sub(1);
            }
            self.applications
                .with_label_values(&[f.spec.kind.as_str(), hc.0.as_str(), hc.1.as_str()])
                .inc();
            found = Some(v);
            break;
        }
        let changed = found.is_some() && self.retire_spent(&mut inner, now);
        drop(inner);
        if changed {
            self.bump();
        }
        found
    }

    /// A connect (or, with `listen`, a listen) refused with this status and reason.
    pub(crate) fn refusal(&self, hc: &HcKey, listen: bool) -> Option<(u16, String)> {
        self.apply(hc, true, |f| match &f.effect {
            Effect::Refuse {
                listen: l,
                status,
                reason,
            } if *l == listen => Some((*status, reason.clone())),
            _ => None,
        })
    }

    /// How long to hold the `accept` for a connect to `hc`.
    pub(crate) fn accept_delay(&self, hc: &HcKey) -> Option<Duration> {
        self.apply(hc, true, |f| match &f.effect {
            Effect::DelayAccept(d) => Some(*d),
            _ => None,
        })
    }

    /// How long to hold the sender's answer once the listener accepted.
    pub(crate) fn answer_delay(&self, hc: &HcKey) -> Option<Duration> {
        self.apply(hc, true, |f| match &f.effect {
            Effect::DelayAnswer(d) => Some(*d),
            _ => None,
        })
    }

    /// Whether control channels of `hc` are stalled (`count`: a channel starts a stall).
    pub(crate) fn stalled(&self, hc: &HcKey, count: bool) -> bool {
        self.apply(hc, count, |f| {
            matches!(f.effect, Effect::Stall).then_some(())
        })
        .is_some()
    }

    /// Whether a `renewToken` on `hc` is refused.
    pub(crate) fn renewal_refused(&self, hc: &HcKey) -> bool {
        self.apply(hc, true, |f| {
            matches!(f.effect, Effect::Expire).then_some(())
        })
        .is_some()
    }

    /// What a listener that just joined `hc` meets.
    pub(crate) fn listener_joined(&self, hc: &HcKey) -> Option<ListenerFault> {
        self.apply(hc, true, |f| match &f.effect {
            Effect::Drop(how) => Some(ListenerFault::Drop(how.clone())),
            _ => None,
        })
    }

    /// What an HTTP-mode request to `hc` meets.
    pub(crate) fn http(&self, hc: &HcKey) -> Option<HttpFault> {
        self.apply(hc, true, |f| match &f.effect {
            Effect::HttpStatus(status, reason) => Some(HttpFault::Status(*status, reason.clone())),
            Effect::HttpTimeout => Some(HttpFault::Timeout),
            _ => None,
        })
    }

    /// What applies to a tunnel of `hc` with `tracking_id`; `opening` counts cuts and shapes
    /// of a tunnel that just opened as applications.
    pub(crate) fn tunnel(&self, hc: &HcKey, tracking_id: &str, opening: bool) -> TunnelFaults {
        let mut out = TunnelFaults {
            clears: self.clears(&hc.0),
            ..TunnelFaults::default()
        };
        if !self.any.load(Ordering::Acquire) {
            return out;
        }
        let cut = |count| {
            self.apply(hc, count, |f| match &f.effect {
                Effect::Cut {
                    cut,
                    tracking_id: id,
                    after_bytes,
                } if id.as_deref().is_none_or(|id| id == tracking_id) => {
                    Some((*cut, *after_bytes, f.spec.count.is_some()))
                }
                _ => None,
            })
        };
        match cut(opening) {
            Some((c, None, _)) => out.cut_now = Some(c),
            Some((c, Some(n), kept)) => {
                out.cut_after = Some((n, c));
                out.kept_cut_after = kept;
            }
            None => {}
        }
        if let Some((shape, kept)) = self.apply(hc, opening, |f| match &f.effect {
            Effect::Shape(s) => Some((*s, f.spec.count.is_some())),
            _ => None,
        }) {
            out.shape = Some(shape);
            out.kept_shape = kept;
        }
        out
    }

    /// How many times faults covering `namespace` were cleared: a tunnel there keeps what a
    /// counted fault gave it until this moves.
    fn clears(&self, namespace: &str) -> u64 {
        self.clears_all.load(Ordering::Acquire)
            + lock(&self.clears_in).get(namespace).copied().unwrap_or(0)
    }

    /// The faults, active first, then the ended ones (newest last).
    pub(crate) fn list(&self) -> (Vec<FaultInfo>, Vec<FaultInfo>) {
        self.expire_due();
        let inner = lock(&self.inner);
        (
            inner.active.iter().map(|f| f.info(None)).collect(),
            inner.ended.iter().cloned().collect(),
        )
    }

    /// One fault by id (`f3`), active or ended.
    pub(crate) fn get(&self, id: &str) -> Option<FaultInfo> {
        let (active, ended) = self.list();
        active.into_iter().chain(ended).find(|f| f.id == id)
    }

    /// Ends the active faults `select` picks (and lifts what counted faults left on live
    /// tunnels); returns them.
    /// `lift` names the namespace whose tunnels drop what counted faults left them (`None`:
    /// every namespace).
    pub(crate) fn clear(
        &self,
        select: impl Fn(&FaultInfo) -> bool,
        lift: Option<&str>,
    ) -> Vec<FaultInfo> {
        match lift {
            None => {
                self.clears_all.fetch_add(1, Ordering::AcqRel);
            }
            Some(ns) => *lock(&self.clears_in).entry(ns.to_owned()).or_default() += 1,
        }
        let mut cleared = Vec::new();
        {
            let mut inner = lock(&self.inner);
            let mut i = 0;
            while i < inner.active.len() {
                if !select(&inner.active[i].info(None)) {
                    i += 1;
                    continue;
                }
                let info = self.take_active(&mut inner, i).info(Some("cleared"));
                cleared.push(info.clone());
                inner.record_ended(info);
            }
            self.any.store(!inner.active.is_empty(), Ordering::Release);
        }
        // Always: live tunnels drop what counted faults left them even when nothing was active.
        self.bump();
        cleared
    }

    /// Forgets ended faults too (clearing everything).
    pub(crate) fn forget_ended(&self, select: impl Fn(&FaultInfo) -> bool) {
        lock(&self.inner).ended.retain(|f| !select(f));
    }

    /// Takes the active fault at `i` out (the active gauge follows).
    fn take_active(&self, inner: &mut Inner, i: usize) -> Active {
        let f = inner.active.remove(i);
        self.active_gauge
            .with_label_values(&[f.spec.kind.as_str()])
            .dec();
        f
    }
}

impl Inner {
    /// Keeps `info` among the last [`ENDED_KEPT`] ended faults.
    fn record_ended(&mut self, info: FaultInfo) {
        if self.ended.len() == ENDED_KEPT {
            self.ended.pop_front();
        }
        self.ended.push_back(info);
    }
}

fn bad<T>(why: String) -> Result<T, FaultError> {
    Err(FaultError::Invalid(why))
}

/// Checks `spec` against the model and the kind's rules; returns it normalized with its effect.
fn check(state: &RelayState, mut spec: FaultSpec) -> Result<(FaultSpec, Effect), FaultError> {
    let kind = spec.kind;
    // Scope: names must exist (lower-case, as the relay keys them).
    spec.namespace = spec.namespace.map(|n| n.trim().to_ascii_lowercase());
    spec.hybrid_connection = spec
        .hybrid_connection
        .map(|h| h.trim().trim_matches('/').to_ascii_lowercase());
    {
        let model = state.store.read();
        match (&spec.namespace, &spec.hybrid_connection) {
            (Some(ns), hc) => {
                let Ok(n) = model.namespace(ns) else {
                    return Err(FaultError::NotFound(format!("no namespace '{ns}'")));
                };
                if let Some(hc) = hc
                    && !n.hybrid_connections.contains_key(hc)
                {
                    return Err(FaultError::NotFound(format!(
                        "no hybrid connection '{hc}' in namespace '{ns}'"
                    )));
                }
            }
            (None, Some(hc)) => {
                if !model
                    .namespaces
                    .values()
                    .any(|n| n.hybrid_connections.contains_key(hc))
                {
                    return Err(FaultError::NotFound(format!(
                        "no namespace has a hybrid connection '{hc}'"
                    )));
                }
            }
            (None, None) => {}
        }
    }
    if let Some(d) = spec.duration_seconds
        && !(d > 0.0 && d <= MAX_DURATION_SECONDS)
    {
        return bad(format!(
            "durationSeconds must be more than 0 and at most {MAX_DURATION_SECONDS} (a week), not {d}"
        ));
    }
    if spec.count == Some(0) {
        return bad("count must be at least 1".into());
    }
    if spec.every_nth == Some(0) {
        return bad("everyNth must be at least 1".into());
    }
    if let Some(r) = &spec.reason
        && (r.chars().count() > MAX_REASON || r.chars().any(char::is_control))
    {
        return bad(format!(
            "reason must be at most {MAX_REASON} characters without control characters"
        ));
    }
    let allowed: &[&str] = match kind {
        FaultKind::DropListeners => &["closeCode", "reason", "count"],
        FaultKind::RefuseConnects | FaultKind::RefuseListens | FaultKind::HttpStatus => {
            &["status", "reason", "everyNth", "count"]
        }
        FaultKind::DelayAccept | FaultKind::DelayRendezvous => &["delayMs", "everyNth", "count"],
        FaultKind::StallControl => &[],
        FaultKind::ExpireTokens => &["count"],
        FaultKind::CutTunnels => &["mode", "closeCode", "trackingId", "afterBytes", "count"],
        FaultKind::ShapeTunnels => &[
            "latencyMs",
            "bytesPerSecond",
            "senderToListenerBytesPerSecond",
            "listenerToSenderBytesPerSecond",
            "count",
        ],
        FaultKind::HttpTimeout => &["everyNth", "count"],
    };
    if let Some(field) = spec.set_fields().into_iter().find(|f| !allowed.contains(f)) {
        return bad(format!(
            "'{field}' does not apply to a {} fault (it takes: {})",
            kind.as_str(),
            if allowed.is_empty() {
                "namespace, hybridConnection, durationSeconds".to_owned()
            } else {
                allowed.join(", ")
            }
        ));
    }
    let reason = |default: &str| spec.reason.clone().unwrap_or_else(|| default.to_owned());
    let status = |what: &str| match spec.status {
        Some(s) if (400..=599).contains(&s) => Ok(s),
        Some(s) => bad(format!("status must be 400 to 599, not {s}")),
        None => bad(format!("a {what} fault needs 'status' (400 to 599)")),
    };
    let close_code = |default: Option<u16>| match spec.close_code.or(default) {
        Some(c) if matches!(c, 1000..=1003 | 1007..=1014 | 3000..=4999) => Ok(Some(c)),
        Some(c) => bad(format!(
            "closeCode {c} cannot be sent (use 1000-1003, 1007-1014 or 3000-4999)"
        )),
        None => Ok(None),
    };
    let delay = || match spec.delay_ms {
        Some(ms) if ms <= MAX_DELAY_MS => Ok(Duration::from_millis(ms)),
        Some(ms) => bad(format!("delayMs must be at most {MAX_DELAY_MS}, not {ms}")),
        None => bad(format!("a {} fault needs 'delayMs'", kind.as_str())),
    };
    let effect = match kind {
        FaultKind::DropListeners => Effect::Drop(close_code(None)?.map(|c| {
            (
                c,
                reason("The relay dropped the listener (injected fault)."),
            )
        })),
        FaultKind::RefuseConnects | FaultKind::RefuseListens => {
            let listen = kind == FaultKind::RefuseListens;
            let status = status(kind.as_str())?;
            Effect::Refuse {
                listen,
                status,
                reason: reason(&default_reason(status, listen)),
            }
        }
        FaultKind::DelayAccept => Effect::DelayAccept(delay()?),
        FaultKind::DelayRendezvous => Effect::DelayAnswer(delay()?),
        FaultKind::StallControl => Effect::Stall,
        FaultKind::ExpireTokens => Effect::Expire,
        FaultKind::CutTunnels => {
            let mode = spec.mode.unwrap_or(CutMode::Close);
            spec.mode = Some(mode);
            let cut = match mode {
                CutMode::Close => Cut::Close(
                    close_code(Some(close_code::INTERNAL_ERROR))?
                        .unwrap_or(close_code::INTERNAL_ERROR),
                ),
                CutMode::Reset if spec.close_code.is_some() => {
                    return bad(
                        "closeCode applies to mode 'close' only; 'reset' sends no Close".into(),
                    );
                }
                CutMode::Reset => Cut::Reset,
            };
            if spec.after_bytes == Some(0) {
                return bad("afterBytes must be at least 1 (leave it out to cut at once)".into());
            }
            Effect::Cut {
                cut,
                tracking_id: spec.tracking_id.clone(),
                after_bytes: spec.after_bytes,
            }
        }
        FaultKind::ShapeTunnels => {
            let latency = spec.latency_ms.unwrap_or(0);
            if latency > MAX_DELAY_MS {
                return bad(format!("latencyMs must be at most {MAX_DELAY_MS}"));
            }
            let both = spec.bytes_per_second;
            let rate = [
                spec.sender_to_listener_bytes_per_second.or(both),
                spec.listener_to_sender_bytes_per_second.or(both),
            ];
            if rate.contains(&Some(0)) {
                return bad("a rate of 0 bytes per second would stop the tunnel; use stallControl or cutTunnels for that".into());
            }
            if latency == 0 && rate == [None, None] {
                return bad(
                    "a shapeTunnels fault needs latencyMs or a bytes-per-second cap".into(),
                );
            }
            Effect::Shape(Shape {
                latency: Duration::from_millis(latency),
                rate,
            })
        }
        FaultKind::HttpStatus => {
            let status = status(kind.as_str())?;
            Effect::HttpStatus(status, reason(&default_reason(status, false)))
        }
        FaultKind::HttpTimeout => Effect::HttpTimeout,
    };
    Ok((spec, effect))
}

/// The reason phrase of an injected refusal: what the relay says for that status, so clients
/// that read the reason (hc-client's QuotaExceeded, the SDKs' exception text) react as they
/// would to the real thing.
fn default_reason(status: u16, listen: bool) -> String {
    let text = match status {
        401 => "ExpiredToken: The token is expired.",
        403 => "QuotaExceeded: the namespace already has the maximum number of connections.",
        404 if listen => "Endpoint does not exist.",
        404 => "There are no listeners connected for the endpoint.",
        500 => "InternalServerError: the relay failed to process the request.",
        503 => "ServerBusy: the relay is too busy to serve the request.",
        504 => "The listener did not accept the connection within the allowed timeout.",
        _ => "The relay refused the request.",
    };
    format!("{text} (injected fault)")
}

/// Adds a fault: checks it, acts on what is live, and starts its timer.
pub(crate) fn add(state: &RelayState, spec: FaultSpec) -> Result<FaultInfo, FaultError> {
    let (spec, effect) = check(state, spec)?;
    let faults = &state.faults;
    let now = Instant::now();
    let duration = spec.duration_seconds.map(Duration::from_secs_f64);
    let action = matches!(
        effect,
        Effect::Drop(_)
            | Effect::Expire
            | Effect::Cut {
                after_bytes: None,
                ..
            }
    );
    let lasting = !action || duration.is_some() || spec.count.is_some();
    let created_at = state.options.clock.unix_now();
    let mut f = Active {
        id: 0,
        every: spec.every_nth.unwrap_or(1),
        remaining: spec.count,
        expires_at: duration.map(|d| created_at + d.as_secs_f64().ceil() as u64),
        until: duration.map(|d| now + d),
        spec,
        effect,
        created_at,
        seen: 0,
        applied: 0,
        lasting,
    };
    let kind = f.spec.kind;
    let mut inner = lock(&faults.inner);
    if inner.active.len() >= MAX_ACTIVE_FAULTS {
        return Err(FaultError::TooMany);
    }
    // Act on what is live now, as far as the count allows.
    let budget = f.remaining.unwrap_or(u64::MAX);
    let acted: Vec<HcKey> = match &f.effect {
        Effect::Drop(_) | Effect::Expire => {
            let order = match &f.effect {
                Effect::Drop(how) => ListenerFault::Drop(how.clone()),
                _ => ListenerFault::Expire,
            };
            let mut acted = Vec::new();
            for (key, info) in state.registry.listeners() {
                if acted.len() as u64 >= budget {
                    break;
                }
                if f.covers(&key) {
                    info.order(order.clone());
                    acted.push(key);
                }
            }
            acted
        }
        Effect::Cut {
            cut,
            tracking_id,
            after_bytes: None,
        } => {
            let acted = state.telemetry.mark_cut(*cut, budget, |hc, id| {
                f.covers(hc) && tracking_id.as_deref().is_none_or(|t| t == id)
            });
            if let Some(id) = tracking_id
                && acted.is_empty()
                && !lasting
            {
                return Err(FaultError::NotFound(format!(
                    "no live tunnel has TrackingId '{id}'"
                )));
            }
            acted
        }
        _ => Vec::new(),
    };
    for key in &acted {
        faults
            .applications
            .with_label_values(&[kind.as_str(), key.0.as_str(), key.1.as_str()])
            .inc();
    }
    f.applied = acted.len() as u64;
    if let Some(left) = f.remaining.as_mut() {
        *left = left.saturating_sub(f.applied);
    }
    inner.next_id += 1;
    f.id = inner.next_id;
    let info = if !f.lasting || f.remaining == Some(0) {
        // Done already: it acted once, or its count went on what was live.
        let info = f.info(Some(if f.lasting { "count" } else { "acted" }));
        inner.record_ended(info.clone());
        info
    } else {
        faults
            .active_gauge
            .with_label_values(&[kind.as_str()])
            .inc();
        let info = f.info(None);
        inner.active.push(f);
        faults.any.store(true, Ordering::Release);
        info
    };
    drop(inner);
    faults.bump();
    if let Some(d) = duration
        && info.active
        && let Ok(rt) = tokio::runtime::Handle::try_current()
    {
        let state_faults = std::sync::Arc::clone(&state.faults);
        let cancel = state.cancel.clone();
        rt.spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(d) => state_faults.expire_due(),
                _ = cancel.cancelled() => {}
            }
        });
    }
    tracing::info!(
        fault = %info.id,
        kind = kind.as_str(),
        namespace = info.spec.namespace.as_deref().unwrap_or("*"),
        hybrid_connection = info.spec.hybrid_connection.as_deref().unwrap_or("*"),
        applied = info.applied,
        active = info.active,
        "fault injected"
    );
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_from_camel_case_json_and_unknown_fields_are_named() {
        let s: FaultSpec = serde_json::from_str(
            r#"{"kind":"refuseConnects","status":503,"hybridConnection":"db","everyNth":2}"#,
        )
        .unwrap();
        assert_eq!(s.kind, FaultKind::RefuseConnects);
        assert_eq!((s.status, s.every_nth), (Some(503), Some(2)));
        let e = serde_json::from_str::<FaultSpec>(r#"{"kind":"cutTunnels","bytes":1}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `bytes`"), "{e}");
        let e = serde_json::from_str::<FaultSpec>(r#"{"kind":"explode"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown variant `explode`"), "{e}");
        // The output omits what is not set.
        assert_eq!(
            serde_json::to_string(&FaultSpec::new(FaultKind::StallControl)).unwrap(),
            r#"{"kind":"stallControl"}"#
        );
    }

    #[test]
    fn urls_for_loopback_and_other_addresses() {
        assert_eq!(
            relay_url(([127, 0, 0, 1], 9443).into(), true),
            "https://localhost:9443"
        );
        assert_eq!(
            relay_url(([0, 0, 0, 0], 9080).into(), false),
            "http://localhost:9080"
        );
        assert_eq!(
            relay_url(([10, 1, 2, 3], 9443).into(), true),
            "https://10.1.2.3:9443"
        );
    }

    #[test]
    fn a_clear_in_one_namespace_lifts_only_its_tunnels_kept_effects() {
        let faults = Faults::new(&Registry::new());
        let key = |ns: &str| (ns.to_owned(), "hc".to_owned());
        let shape = Shape {
            latency: Duration::from_millis(5),
            rate: [None, None],
        };
        // What a counted shaping fault gave a tunnel in each namespace when it opened.
        let at_open = |ns: &str| TunnelFaults {
            shape: Some(shape),
            kept_shape: true,
            ..faults.tunnel(&key(ns), "t", false)
        };
        let (a, b) = (at_open("alpha"), at_open("beta"));
        // Later, with the counted fault used up, the tunnels keep it...
        let now = |ns: &str| faults.tunnel(&key(ns), "t", false);
        assert_eq!(now("alpha").keeping(&a).shape, Some(shape));
        // ...until a clear covers their namespace: alpha's clear lifts alpha's only.
        faults.clear(|_| true, Some("alpha"));
        assert_eq!(now("alpha").keeping(&a).shape, None);
        assert_eq!(now("beta").keeping(&b).shape, Some(shape));
        // A clear of every namespace lifts beta's too.
        faults.clear(|_| true, None);
        assert_eq!(now("beta").keeping(&b).shape, None);
    }

    #[test]
    fn cut_orders_survive_a_slot() {
        for c in [Cut::Reset, Cut::Close(1011), Cut::Close(4000)] {
            assert_eq!(Cut::decode(c.encode()), Some(c));
        }
        assert_eq!(Cut::decode(0), None);
    }

    #[test]
    fn default_reasons_keep_the_prefixes_clients_read() {
        assert!(default_reason(403, false).starts_with("QuotaExceeded"));
        assert!(default_reason(404, false).starts_with("There are no listeners"));
        assert!(default_reason(404, true).starts_with("Endpoint does not exist"));
        assert!(default_reason(401, true).starts_with("ExpiredToken"));
    }
}
