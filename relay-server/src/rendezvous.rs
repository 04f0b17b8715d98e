//! The WebSocket actions on `/$hc/{path}` (PROTOCOL.md §5.1, §6.1–§6.3):
//!
//! - `listen`: authorize (Listen, always), register the listener, upgrade, run its control
//!   channel.
//! - `connect` (also a missing action, §15 MUST 1): authorize (Send unless the hybrid
//!   connection allows anonymous senders), pick a listener at random, send it `accept`, hold
//!   the sender's handshake open until the listener joins, rejects, or the rendezvous expires.
//! - `accept`: the listener joins a rendezvous with the single-use address; with
//!   `sb-hc-statusCode` (or the unprefixed spelling) it rejects instead and gets 410.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use axum::extract::Request;
use axum::response::Response;
use hc_protocol::Right;
use hc_protocol::address::{self, Action};
use hc_protocol::control::{self, AcceptCommand, Headers, RemoteEndpoint, ServiceCommand};
use hc_protocol::limits::MAX_LISTENERS_PER_HYBRID_CONNECTION;
use http::{HeaderMap, StatusCode};
use hyper::upgrade::OnUpgrade;
use tokio::sync::{mpsc, oneshot};
use tracing::{Instrument, debug, debug_span, info};

use crate::control::ControlChannel;
use crate::error::{ErrorFormat, RelayError, Tracking, text_response};
use crate::fault::TunnelFaults;
use crate::head_case::HeaderNames;
use crate::pump::{self, PumpOptions};
use crate::registry::{ControlOut, HcKey, ListenerHandle, ListenerInfo, RendezvousReply};
use crate::state::RelayState;
use crate::target::{Target, TokenSource, find_token};
use crate::telemetry::Stage;
use crate::upgrade as ws;

/// How many commands may wait for a listener's control channel.
const CONTROL_QUEUE: usize = 64;

/// One request to `/$hc/...`, taken apart.
#[derive(Debug)]
pub(crate) struct WsRequest {
    /// The request (headers, extensions with the upgrade).
    pub req: Request,
    /// Host header (with port).
    pub host: String,
    /// Path after `/$hc/`, raw.
    pub path: String,
    /// Raw query.
    pub query: String,
    /// The sender's or listener's socket address.
    pub peer: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// Tracking text for errors.
    pub tracking: Tracking,
    /// Header names as the client spelled them.
    pub names: HeaderNames,
}

impl WsRequest {
    fn target(&self, state: &RelayState) -> Result<Target, RelayError> {
        Target::resolve(&state.store.read(), &self.host, &self.path)
    }

    fn take_upgrade(&mut self) -> Result<OnUpgrade, RelayError> {
        self.req
            .extensions_mut()
            .remove::<OnUpgrade>()
            .ok_or_else(|| RelayError::BadRequest("This connection cannot be upgraded.".into()))
    }
}

/// Serves one `/$hc/` request.
pub(crate) async fn handle(state: Arc<RelayState>, mut r: WsRequest) -> Response {
    let action = match address::query_value(&r.query, address::QUERY_ACTION) {
        None => Ok(Action::Connect),
        Some(a) => Action::parse(&a).ok_or_else(|| {
            RelayError::BadRequest(format!("Unrecognized action '{a}' or URL not valid."))
        }),
    };
    let tracking = r.tracking.clone();
    let mut key = None;
    let (kind, result) = match action {
        Ok(Action::Listen) => (Stage::Listen, listen(&state, &mut r, &mut key).await),
        Ok(Action::Connect) => (Stage::Connect, connect(&state, &mut r, &mut key).await),
        Ok(Action::Accept) => (Stage::Accept, accept(&state, &mut r)),
        Ok(Action::Request) => (Stage::Accept, request(&state, &mut r)),
        Err(e) => (Stage::Connect, Err(e)),
    };
    result.unwrap_or_else(|e| {
        debug!(tracking_id = %tracking.id, status = e.status(), error = %e, "websocket request refused");
        let key = crate::telemetry::key_or_namespace(key, &state.store, &r.host);
        state.telemetry.refused(
            kind,
            key.as_ref(),
            &e,
            &r.host,
            &r.path,
            r.peer,
            &tracking.id,
            tracking.now,
        );
        e.render(&tracking, ErrorFormat::Text)
    })
}

async fn listen(
    state: &Arc<RelayState>,
    r: &mut WsRequest,
    key: &mut Option<HcKey>,
) -> Result<Response, RelayError> {
    let upgrade = ws::check_upgrade(r.req.headers())?;
    let target = r.target(state)?;
    *key = Some(target.key.clone());
    if let Some((status, text)) = state.faults.refusal(&target.key, true) {
        return Err(RelayError::Injected { status, text });
    }
    let token = find_token(r.req.headers(), &r.query).map(|t| t.0);
    let auth = target.authorize(token.as_deref(), Right::Listen, r.tracking.now)?;
    let permit = state
        .registry
        .acquire_connection(&target.key.0, state.options.max_connections_per_namespace)?;
    let (tx, rx) = mpsc::channel(CONTROL_QUEUE);
    let info = Arc::new(ListenerInfo {
        tracking_id: r.tracking.id.clone(),
        peer: r.peer,
        since: r.tracking.now,
        expires_at: AtomicU64::new(auth.expires_at),
        fault: Default::default(),
    });
    let handle = ListenerHandle {
        id: state.registry.next_listener_id(),
        base_url: format!("{}://{}", if r.tls { "wss" } else { "ws" }, r.host),
        info: info.clone(),
        tx,
    };
    let guard =
        state
            .registry
            .add_listener(&target.key, handle, MAX_LISTENERS_PER_HYBRID_CONNECTION)?;
    let on_upgrade = r.take_upgrade()?;
    let channel = ControlChannel {
        state: state.clone(),
        hc: target.key.clone(),
        tracking_id: r.tracking.id.clone(),
        expires_at: auth.expires_at,
        info,
        guard,
        permit,
        rx,
    };
    state.telemetry.listener_accepted(&target.key);
    info!(tracking_id = %r.tracking.id, namespace = %target.namespace, hybrid_connection = %target.hc_name, peer = %r.peer, "listener connected");
    let span = debug_span!("control", tracking_id = %r.tracking.id);
    state.tracker.spawn(
        async move {
            match on_upgrade.await {
                Ok(io) => channel.run(hyper_util::rt::TokioIo::new(io)).await,
                Err(e) => debug!(error = %e, "listener upgrade failed"),
            }
        }
        .instrument(span),
    );
    Ok(ws::switching_protocols(
        &upgrade.key,
        upgrade.protocols.first().map(String::as_str),
    ))
}

async fn connect(
    state: &Arc<RelayState>,
    r: &mut WsRequest,
    key: &mut Option<HcKey>,
) -> Result<Response, RelayError> {
    let upgrade = ws::check_upgrade(r.req.headers())?;
    let target = r.target(state)?;
    *key = Some(target.key.clone());
    if let Some((status, text)) = state.faults.refusal(&target.key, false) {
        return Err(RelayError::Injected { status, text });
    }
    let token = find_token(r.req.headers(), &r.query);
    if target.requires_client_authorization {
        target.authorize(
            token.as_ref().map(|t| t.0.as_str()),
            Right::Send,
            r.tracking.now,
        )?;
    }
    let permit = state
        .registry
        .acquire_connection(&target.key.0, state.options.max_connections_per_namespace)?;
    let listener = state
        .registry
        .pick_listener(&target.key)
        .ok_or(RelayError::NoListeners)?;
    let (reply_tx, reply_rx) = oneshot::channel();
    let id = r.tracking.id.clone();
    let _pending = state.registry.insert_pending(
        &target.key,
        &id,
        reply_tx,
        state.options.max_pending_rendezvous,
    )?;
    let command = ServiceCommand::Accept(AcceptCommand {
        address: address::rendezvous_address(
            &listener.base_url,
            &r.path,
            &address::app_query(&r.query),
            Action::Accept,
            &id,
        ),
        id: id.clone(),
        connect_headers: connect_headers(r.req.headers(), &r.names, token.map(|t| t.1)),
        remote_endpoint: RemoteEndpoint {
            address: r.peer.ip().to_canonical().to_string(),
            port: r.peer.port(),
        },
    });
    let sender_upgrade = r.take_upgrade()?;
    let waiting = std::time::Instant::now();
    // Counts the connect as aborted if the sender leaves while it waits (this future is
    // dropped then); disarmed once the listener has answered.
    let mut gone = SenderGone {
        state: state.clone(),
        key: Some(target.key.clone()),
    };
    let reply = wait_for_listener(
        state,
        &target.key,
        listener,
        ControlOut::Accept {
            id: id.clone(),
            json: control::to_json(&command),
        },
        reply_rx,
    )
    .await;
    gone.key = None;
    let waited = waiting.elapsed().as_secs_f64();
    match reply? {
        RendezvousReply::Rejected {
            status,
            description,
        } => {
            state.telemetry.rendezvous_answered(&target.key, waited);
            Err(RelayError::Rejected {
                status,
                description,
            })
        }
        RendezvousReply::Accepted {
            upgrade: listener_upgrade,
            protocol,
            peer,
        } => {
            let chosen = protocol.filter(|p| upgrade.protocols.contains(p));
            let stats = state.telemetry.tunnel_opened(
                &target.key,
                &id,
                r.peer,
                peer,
                waited,
                r.tracking.now,
            );
            spawn_tunnel(state, sender_upgrade, listener_upgrade, permit, stats, &id);
            Ok(ws::switching_protocols(&upgrade.key, chosen.as_deref()))
        }
    }
}

/// Records a connect whose sender went away while waiting for the listener.
struct SenderGone {
    state: Arc<RelayState>,
    key: Option<HcKey>,
}

impl Drop for SenderGone {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.state.telemetry.sender_left_waiting(&key);
        }
    }
}

/// Sends `accept` and waits for the listener's answer within the rendezvous timeout.
/// Injected delays (before the `accept`, and between the listener's answer and the
/// sender's) count against that timeout, as a slow relay's would.
async fn wait_for_listener(
    state: &RelayState,
    key: &HcKey,
    listener: ListenerHandle,
    out: ControlOut,
    reply: oneshot::Receiver<RendezvousReply>,
) -> Result<RendezvousReply, RelayError> {
    let deadline = tokio::time::Instant::now() + state.options.rendezvous_timeout;
    let accept_delay = state.faults.accept_delay(key);
    let answer_delay = state.faults.answer_delay(key);
    let wait = async {
        if let Some(d) = accept_delay {
            tokio::time::sleep(d).await;
        }
        listener
            .tx
            .send(out)
            .await
            .map_err(|_| RelayError::NoListeners)?;
        let answer = reply.await.map_err(|_| RelayError::Rejected {
            status: 502,
            description: "The listener failed to complete the rendezvous.".into(),
        })?;
        if let Some(d) = answer_delay {
            tokio::time::sleep(d).await;
        }
        Ok(answer)
    };
    tokio::select! {
        r = tokio::time::timeout_at(deadline, wait) => r.unwrap_or(Err(RelayError::ListenerTimeout)),
        _ = state.cancel.cancelled() => Err(RelayError::ShuttingDown),
    }
}

fn spawn_tunnel(
    state: &Arc<RelayState>,
    sender: OnUpgrade,
    listener: OnUpgrade,
    permit: crate::registry::ConnectionPermit,
    live: crate::telemetry::TunnelGuard,
    tracking_id: &str,
) {
    let options = PumpOptions {
        buffer_size: state.options.tunnel_buffer_size,
        shutdown_grace: state.options.shutdown_grace,
    };
    let cancel = state.cancel.clone();
    let faults = state.faults.clone();
    let span = debug_span!("tunnel", tracking_id = %tracking_id);
    state.tracker.spawn(
        async move {
            let started = std::time::Instant::now();
            let (s, l) = tokio::join!(sender, listener);
            let (Ok(s), Ok(l)) = (s, l) else {
                debug!("tunnel upgrade failed on one side");
                live.finish(true);
                return;
            };
            // What injected faults ask of this tunnel: a cut ordered for its slot, or what
            // the lasting faults covering it say (looked up at open only while any is
            // active, and at every change of the faults).
            let current = |opening: bool| {
                let mut now = TunnelFaults::default();
                if (faults.any() || !opening)
                    && let Some(v) = live.view()
                {
                    now = faults.tunnel(&v.hc, &v.tracking_id, opening);
                }
                if let Some(cut) = live.take_cut() {
                    now.cut_now = Some(cut);
                }
                now
            };
            let report = pump::bridge(
                hyper_util::rt::TokioIo::new(s),
                hyper_util::rt::TokioIo::new(l),
                options,
                cancel,
                live.counters(),
                pump::FaultFeed {
                    changed: faults.subscribe(),
                    current: &current,
                },
            )
            .await;
            drop(permit);
            if let Some(t) = live.view() {
                info!(
                    tracking_id = %t.tracking_id,
                    namespace = %t.hc.0,
                    hybrid_connection = %t.hc.1,
                    sender = %t.sender,
                    listener = %t.listener,
                    sender_to_listener = report.sender_to_listener,
                    listener_to_sender = report.listener_to_sender,
                    duration_ms = started.elapsed().as_millis() as u64,
                    outcome = if report.aborted.is_some() { "aborted" } else { "closed" },
                    reason = report.aborted.as_deref().unwrap_or(""),
                    "tunnel closed"
                );
            }
            live.finish(report.aborted.is_some());
        }
        .instrument(span),
    );
}

fn accept(state: &Arc<RelayState>, r: &mut WsRequest) -> Result<Response, RelayError> {
    let target = r.target(state)?;
    let id =
        address::query_value(&r.query, address::QUERY_ID).ok_or(RelayError::RendezvousExpired)?;
    // Keyed by this hybrid connection: an id of another one (or another namespace) is simply
    // unknown here, and its sender keeps waiting undisturbed.
    let pending = state
        .registry
        .take_pending(&target.key, &id)
        .ok_or(RelayError::RendezvousExpired)?;
    if let Some((status, description)) = reject_params(&r.query) {
        let _ = pending.send(RendezvousReply::Rejected {
            status,
            description,
        });
        return Ok(text_response(410, "Gone: the connection was rejected."));
    }
    let upgrade = match ws::check_upgrade(r.req.headers()) {
        Ok(u) => u,
        Err(e) => {
            let description =
                "The listener's rendezvous request was not a WebSocket upgrade.".to_owned();
            let _ = pending.send(RendezvousReply::Rejected {
                status: 502,
                description,
            });
            return Err(e);
        }
    };
    let protocol = upgrade.protocols.first().cloned();
    let on_upgrade = r.take_upgrade()?;
    pending
        .send(RendezvousReply::Accepted {
            upgrade: on_upgrade,
            protocol: protocol.clone(),
            peer: r.peer,
        })
        .map_err(|_| RelayError::SenderGone)?;
    Ok(ws::switching_protocols(&upgrade.key, protocol.as_deref()))
}

/// `sb-hc-action=request`: the listener joins an HTTP request's rendezvous (§8.1).
fn request(state: &Arc<RelayState>, r: &mut WsRequest) -> Result<Response, RelayError> {
    let target = r.target(state)?;
    let id =
        address::query_value(&r.query, address::QUERY_ID).ok_or(RelayError::RendezvousExpired)?;
    let upgrade = ws::check_upgrade(r.req.headers())?;
    let on_upgrade = r.take_upgrade()?;
    crate::http::rendezvous(state, &id, &target, on_upgrade)?;
    Ok(ws::switching_protocols(
        &upgrade.key,
        upgrade.protocols.first().map(String::as_str),
    ))
}

/// `sb-hc-statusCode` / `sb-hc-statusDescription`, or the unprefixed spelling hyco-ws uses
/// (§6.2). Statuses outside 400..=599 become 400; a missing description becomes the standard
/// reason phrase.
fn reject_params(query: &str) -> Option<(u16, String)> {
    let code = address::query_value(query, address::QUERY_STATUS_CODE)
        .or_else(|| address::query_value(query, address::QUERY_STATUS_CODE_UNPREFIXED))?;
    let status = code
        .trim()
        .parse::<u16>()
        .ok()
        .filter(|s| (400..=599).contains(s))
        .unwrap_or(400);
    let description = address::query_value(query, address::QUERY_STATUS_DESCRIPTION)
        .or_else(|| address::query_value(query, address::QUERY_STATUS_DESCRIPTION_UNPREFIXED))
        .unwrap_or_else(|| {
            StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("Rejected")
                .to_owned()
        });
    Some((status, description))
}

/// The sender's upgrade headers for `accept.connectHeaders` (§5.2): everything but the token
/// carriers, names as the sender spelled them, repeated headers joined with ", ".
fn connect_headers(
    headers: &HeaderMap,
    names: &HeaderNames,
    token_source: Option<TokenSource>,
) -> Headers {
    let mut out = Headers::default();
    for (name, value) in headers {
        let n = name.as_str();
        if n.eq_ignore_ascii_case(address::HEADER_SB_AUTHORIZATION)
            || (n == "authorization" && token_source == Some(TokenSource::Authorization))
        {
            continue;
        }
        out.append(&names.spell(n), &String::from_utf8_lossy(value.as_bytes()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn header_names_and_auth_stripping() {
        let names = HeaderNames::default();
        let mut h = HeaderMap::new();
        h.insert(
            "servicebusauthorization",
            HeaderValue::from_static("secret"),
        );
        h.insert("authorization", HeaderValue::from_static("Bearer app"));
        h.append("x-multi", HeaderValue::from_static("a"));
        h.append("x-multi", HeaderValue::from_static("b"));
        let out = connect_headers(&h, &names, Some(TokenSource::Header));
        assert_eq!(out.get("Authorization"), Some("Bearer app"));
        assert_eq!(out.get("X-Multi"), Some("a, b"));
        assert!(out.get("ServiceBusAuthorization").is_none());
        assert!(
            connect_headers(&h, &names, Some(TokenSource::Authorization))
                .get("authorization")
                .is_none()
        );
    }

    proptest::proptest! {
        /// The relay's own parsers of request targets take any UTF-8 (issue 10).
        #[test]
        fn target_parsers_take_any_text(query in "\\PC{0,80}", path in "\\PC{0,80}", head in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            if let Some((status, _)) = reject_params(&query) {
                proptest::prop_assert!((400..=599).contains(&status));
            }
            let _ = reject_params(&format!("sb-hc-statusCode={query}&sb-hc-statusDescription={path}"));
            let _ = crate::target::find_token(&HeaderMap::new(), &query);
            let _ = Tracking::for_request(&query, &path, &path, 0);
            let mut model = crate::Model::default();
            crate::config::ensure_default_namespace(&mut model, 0).unwrap();
            let _ = crate::target::Target::resolve(&model, "localhost", &path);
            let _ = crate::target::Target::resolve(&model, &path, "sample");
            let capture = crate::head_case::HeadCapture::default();
            let mut bytes = format!("GET {path} HTTP/1.1\r\n").into_bytes();
            bytes.extend_from_slice(&head);
            bytes.extend_from_slice(b"\r\n\r\n");
            capture.record_for_test(&bytes);
            let _ = capture.names("GET", &path);
        }
    }

    #[test]
    fn reject_parameters() {
        assert_eq!(
            reject_params(
                "sb-hc-action=accept&sb-hc-statusCode=401&sb-hc-statusDescription=No+way"
            ),
            Some((401, "No way".into()))
        );
        assert_eq!(
            reject_params("statusCode=502&statusDescription=Down%21"),
            Some((502, "Down!".into()))
        );
        assert_eq!(
            reject_params("sb-hc-statusCode=200"),
            Some((400, "Bad Request".into()))
        );
        assert_eq!(reject_params("sb-hc-action=accept"), None);
    }
}
