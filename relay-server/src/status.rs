//! Seeing inside the relay, on its own port: `/healthz`, `/readyz`, `/metrics` (Prometheus
//! text format), and the status page `/$status` with its JSON (`/$status/api`) and live
//! updates (`/$status/events`, server-sent events). Everything is also under `/$status/…`;
//! the short paths yield to HTTP request mode when the addressed namespace has a hybrid
//! connection of that name (`$` cannot start one, so `/$status/…` never does).
//!
//! Access: loopback clients need no credentials (so CI can `curl --retry-connrefused
//! …/readyz`); others need a token with Manage rights on the namespace the Host names (then
//! they see that namespace only) or a management bearer token this relay issued (everything),
//! unless the relay runs with `--status-open`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use hc_process::observe::{self, Health, prometheus};
use hc_protocol::Right;
use hc_protocol::auth::{self, AuthScope};
use http::{HeaderValue, Method, StatusCode, header};
use serde_json::{Value, json};

use crate::state::RelayState;
use crate::target::find_token;

/// The status page, served as is (no framework, no CDN: it works offline).
const PAGE: &str = include_str!("status.html");

/// How often the event stream sends a fresh snapshot while something is live (byte counts
/// move without any other change), and at most how often it sends one at all.
const EVENT_TICK: Duration = Duration::from_millis(500);
/// An idle event stream still sends a snapshot this often (a keep-alive through proxies).
const EVENT_IDLE: Duration = Duration::from_secs(15);

/// What a caller may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Every namespace.
    All,
    /// One namespace (lower-case name).
    Namespace(String),
}

impl Scope {
    pub(crate) fn covers(&self, namespace: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Namespace(n) => n.eq_ignore_ascii_case(namespace),
        }
    }

    /// Whether the caller sees a fault on `namespace` (`None`: one on every namespace, which
    /// touches the caller's too).
    pub(crate) fn sees_fault(&self, namespace: Option<&str>) -> bool {
        namespace.is_none_or(|n| self.covers(n))
    }
}

/// The relay is ready once it serves on a socket, has a namespace and its certificate
/// verifies now.
impl Health for RelayState {
    fn ready(&self) -> Result<(), Vec<String>> {
        let mut why = Vec::new();
        if self.cancel.is_cancelled() {
            why.push("the relay is shutting down".to_owned());
        }
        if self.data_port.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            why.push("the relay is not listening yet".to_owned());
        }
        if self.store.read().namespaces.is_empty() {
            why.push("no namespace is configured".to_owned());
        }
        if let Some(check) = self.tls_check.get()
            && !check.valid()
        {
            why.push(
                "the TLS certificate does not verify against the CA now (expired or not yet valid)"
                    .to_owned(),
            );
        }
        if why.is_empty() { Ok(()) } else { Err(why) }
    }

    fn registry(&self) -> &prometheus::Registry {
        &self.telemetry.registry
    }
}

/// The answer for a status path, or `None` when `path` is not one (or a hybrid connection
/// of the short path's name exists and HTTP request mode should have it).
pub(crate) fn route(
    state: &Arc<RelayState>,
    req: &Request,
    peer: SocketAddr,
    host: &str,
    path: &str,
    query: &str,
) -> Option<Routed> {
    let sub = match hc_protocol::address::dollar_path(path, "status") {
        Some("" | "/") => "/",
        Some(rest) => rest,
        None => {
            if !matches!(path, "/healthz" | "/readyz" | "/metrics")
                || crate::target::Target::resolve(&state.store.read(), host, &path[1..]).is_ok()
            {
                return None;
            }
            path
        }
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Some(Routed::Now(text(
            StatusCode::METHOD_NOT_ALLOWED,
            "the status endpoints answer GET and HEAD only\n",
        )));
    }
    let scope = match access(state, req, peer, host, query) {
        Ok(scope) => scope,
        Err((status, why)) => return Some(Routed::Now(refuse(status, &why))),
    };
    Some(Routed::Now(match sub {
        "/healthz" => to_axum(observe::answer(state.as_ref(), req.method(), sub)?),
        "/readyz" => match observe::ready_wait(Some(query)) {
            Some(wait) if state.ready().is_err() => return Some(Routed::ReadyAfter(wait)),
            _ => to_axum(observe::answer(state.as_ref(), req.method(), sub)?),
        },
        "/metrics" => {
            let mut r = Response::new(Body::from(metrics(state, &scope)));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(observe::METRICS_CONTENT_TYPE),
            );
            r
        }
        "/" => {
            let mut r = Response::new(Body::from(PAGE));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            r.headers_mut().insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'",
                ),
            );
            r
        }
        "/api" => json_response(&snapshot(state, &scope)),
        "/events" => events(state.clone(), scope),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: the status endpoints are /$status, /$status/api, /$status/events, /healthz, /readyz and /metrics\n",
        ),
    }))
}

/// What [`route`] decided.
#[derive(Debug)]
pub(crate) enum Routed {
    /// This answer.
    Now(Response),
    /// `/readyz?wait=…` while not ready: answer once ready or after this long.
    ReadyAfter(Duration),
}

impl Routed {
    /// The answer, after the wait if one was asked for.
    pub(crate) async fn answer(self, state: &Arc<RelayState>) -> Response {
        match self {
            Routed::Now(r) => r,
            Routed::ReadyAfter(wait) => {
                tokio::select! {
                    _ = observe::until_ready(state.as_ref(), wait) => {}
                    _ = state.cancel.cancelled() => {}
                }
                observe::answer(state.as_ref(), &Method::GET, "/readyz")
                    .map(to_axum)
                    .unwrap_or_default()
            }
        }
    }
}

fn to_axum(r: http::Response<String>) -> Response {
    r.map(Body::from)
}

fn text(status: StatusCode, body: &str) -> Response {
    let mut r = Response::new(Body::from(body.to_owned()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

pub(crate) fn json_response(v: &Value) -> Response {
    let mut r = Response::new(Body::from(v.to_string()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Who may look, and at what.
pub(crate) fn access(
    state: &RelayState,
    req: &Request,
    peer: SocketAddr,
    host: &str,
    query: &str,
) -> Result<Scope, (StatusCode, String)> {
    if state.options.status_open || peer.ip().to_canonical().is_loopback() {
        return Ok(Scope::All);
    }
    let headers = req.headers();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim().to_owned());
    if let Some(token) = bearer {
        return match crate::arm::verify_bearer(state, &token) {
            Ok(()) => Ok(Scope::All),
            Err(why) => Err((
                StatusCode::UNAUTHORIZED,
                format!("the bearer token is not valid: {why}"),
            )),
        };
    }
    let Some((token, _)) = find_token(headers, query) else {
        return Err((
            StatusCode::UNAUTHORIZED,
            format!(
                "from {} (not loopback) the status endpoints need a SAS token with Manage rights (ServiceBusAuthorization header or sb-hc-token) or a management bearer token issued by this relay",
                peer.ip()
            ),
        ));
    };
    let model = state.store.read();
    let Some(ns) = model.namespace_for_host(host) else {
        return Err((
            StatusCode::NOT_FOUND,
            format!(
                "no namespace answers to host '{}'",
                crate::model::host_without_port(host)
            ),
        ));
    };
    let (hosts, rules) = (ns.hosts(), ns.auth_rules());
    let scope = AuthScope {
        namespace_hosts: &hosts,
        resource_path: "",
        entity_rules: &[],
        namespace_rules: &rules,
    };
    match auth::authorize(
        &token,
        &scope,
        Right::Manage,
        state.options.clock.unix_now(),
    ) {
        Ok(_) => Ok(Scope::Namespace(ns.name.to_ascii_lowercase())),
        Err(e) => Err((
            StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED),
            e.to_string(),
        )),
    }
}

pub(crate) fn refuse(status: StatusCode, why: &str) -> Response {
    let mut r = text(status, &format!("{why}\n"));
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("SharedAccessSignature, Bearer"),
        );
    }
    r
}

/// `/metrics`, limited to the caller's namespace (process figures stay).
fn metrics(state: &RelayState, scope: &Scope) -> String {
    if *scope == Scope::All {
        return observe::encode(&state.telemetry.registry);
    }
    let mut families = state.telemetry.registry.gather();
    for family in &mut families {
        let kept: Vec<_> = family
            .take_metric()
            .into_iter()
            .filter(|m| {
                m.get_label()
                    .iter()
                    .find(|l| l.name() == "namespace")
                    .is_none_or(|l| scope.covers(l.value()))
            })
            .collect();
        family.set_metric(kept);
    }
    families.retain(|f| !f.get_metric().is_empty());
    let mut out = Vec::new();
    let _ = prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &families, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// The `endpoint` an App Service hybrid connection's `userMetadata` names
/// (`[{"key":"endpoint","value":"host:port"}]`), if it does.
fn endpoint_of(metadata: Option<&str>) -> Option<String> {
    let v: Value = serde_json::from_str(metadata?).ok()?;
    v.as_array()?
        .iter()
        .find(|e| e.get("key").and_then(Value::as_str) == Some("endpoint"))
        .and_then(|e| e.get("value"))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// Everything the page shows, as JSON.
fn snapshot(state: &RelayState, scope: &Scope) -> Value {
    let now = state.options.clock.unix_now();
    let live = state.telemetry.live();
    let listeners = state.registry.listeners();
    let tunnels = live.tunnels();
    let http = live.http();
    let model = state.store.read();
    let mut namespaces = Vec::new();
    for ns in model.namespaces.values() {
        let key = ns.name.to_ascii_lowercase();
        if !scope.covers(&key) {
            continue;
        }
        let mut hcs = Vec::new();
        for hc in ns.hybrid_connections.values() {
            let hkey = (key.clone(), hc.name.to_ascii_lowercase());
            let mut ls: Vec<Value> = listeners
                .iter()
                .filter(|(k, _)| *k == hkey)
                .map(|(_, l)| {
                    json!({
                        "trackingId": l.tracking_id,
                        "address": l.peer.to_string(),
                        "since": l.since,
                        "tokenExpires": l.expires_at.load(std::sync::atomic::Ordering::Relaxed),
                    })
                })
                .collect();
            ls.sort_by_key(|l| l["since"].as_u64());
            let mut ts: Vec<Value> = tunnels
                .iter()
                .filter(|t| *t.hc == hkey)
                .map(|t| {
                    json!({
                        "trackingId": t.tracking_id,
                        "sender": t.sender.to_string(),
                        "listener": t.listener.to_string(),
                        "since": t.since,
                        "ageSeconds": now.saturating_sub(t.since),
                        "senderToListener": t.sender_to_listener,
                        "listenerToSender": t.listener_to_sender,
                    })
                })
                .collect();
            ts.sort_by(|a, b| {
                (a["since"].as_u64(), a["trackingId"].as_str())
                    .cmp(&(b["since"].as_u64(), b["trackingId"].as_str()))
            });
            let requests: Vec<&crate::telemetry::HttpInFlight> = http
                .iter()
                .filter(|r| r.namespace == hkey.0 && r.hybrid_connection == hkey.1)
                .collect();
            hcs.push(json!({
                "name": hc.name,
                "requiresClientAuthorization": hc.requires_client_authorization,
                "userMetadata": hc.user_metadata,
                "endpoint": endpoint_of(hc.user_metadata.as_deref()),
                "listeners": ls,
                "tunnels": ts,
                "httpInFlight": requests,
            }));
        }
        namespaces.push(json!({
            "name": ns.name,
            "hosts": ns.hosts(),
            "default": ns.default,
            "hybridConnections": hcs,
        }));
    }
    let refusals: Vec<_> = live
        .refusals()
        .into_iter()
        .filter(|r| scope.covers(&r.namespace))
        .collect();
    let faults: Vec<_> = state
        .faults
        .list()
        .0
        .into_iter()
        .filter(|f| scope.sees_fault(f.spec.namespace.as_deref()))
        .collect();
    json!({
        "faults": faults,
        "relay": {
            "version": env!("CARGO_PKG_VERSION"),
            "started": state.started,
            "now": now,
            "tls": state.tls.is_some(),
            "port": state.data_port.load(std::sync::atomic::Ordering::Relaxed),
            "ready": state.ready().err().unwrap_or_default(),
        },
        "namespaces": namespaces,
        "refusals": refusals,
    })
}

/// Server-sent events: a `snapshot` event at once, then whenever something changed (checked
/// every [`EVENT_TICK`]; while tunnels are live, every tick, as their bytes move), and at
/// least every [`EVENT_IDLE`]. Ends when the relay shuts down.
fn events(state: Arc<RelayState>, scope: Scope) -> Response {
    struct Cursor {
        state: Arc<RelayState>,
        scope: Scope,
        sent: Option<(u64, String)>,
        idle: Duration,
        first: bool,
    }
    let cursor = Cursor {
        state,
        scope,
        sent: None,
        idle: Duration::ZERO,
        first: true,
    };
    let stream = futures_util::stream::unfold(cursor, |mut c| async move {
        loop {
            if !c.first {
                tokio::select! {
                    _ = tokio::time::sleep(EVENT_TICK) => {}
                    _ = c.state.cancel.cancelled() => return None,
                }
                c.idle += EVENT_TICK;
            }
            c.first = false;
            // Faults change without touching the live tables: both numbers only grow.
            let version = c.state.telemetry.live().version() + c.state.faults.generation();
            let busy = c.state.telemetry.live().has_tunnels();
            let unchanged = c.sent.as_ref().is_some_and(|(v, _)| *v == version);
            if unchanged && !busy && c.idle < EVENT_IDLE {
                continue;
            }
            let body = snapshot(&c.state, &c.scope).to_string();
            if unchanged && c.sent.as_ref().is_some_and(|(_, b)| *b == body) && c.idle < EVENT_IDLE
            {
                continue;
            }
            c.idle = Duration::ZERO;
            let event = format!("event: snapshot\ndata: {body}\n\n");
            c.sent = Some((version, body));
            return Some((Ok::<_, std::convert::Infallible>(event), c));
        }
    });
    let mut r = Response::new(Body::from_stream(stream));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_metadata_in_app_service_shape() {
        assert_eq!(
            endpoint_of(Some(r#"[{"key":"endpoint","value":"db.internal:5432"}]"#)),
            Some("db.internal:5432".into())
        );
        assert_eq!(endpoint_of(Some("free text")), None);
        assert_eq!(endpoint_of(None), None);
    }

    #[test]
    fn a_namespace_scope_covers_its_namespace_only() {
        let s = Scope::Namespace("a".into());
        assert!(s.covers("A"));
        assert!(!s.covers("b"));
        assert!(Scope::All.covers("b"));
    }
}
