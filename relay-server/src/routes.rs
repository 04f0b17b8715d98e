//! Request routing: one handler for every path, which picks the namespace by Host header and
//! then the endpoint by path:
//!
//! - `/$hc/{path}` -> WebSocket actions ([`crate::rendezvous`]);
//! - `GET /{hc}?api-version=2016-07` or with `X-PROCESS-AT` -> runtime info (§10);
//! - `GET /` -> a one-line description of the emulator;
//! - any other `/{hc}/...` -> HTTP request mode, which this version answers with 501.
//!
//! Later endpoints (HTTP request mode, the ARM-shaped management API, a status page) are
//! added as routes of the same router.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use hc_protocol::address::{self, HEADER_PROCESS_AT};
use hc_protocol::runtime_info::{self, RuntimeInfo};
use http::{HeaderValue, Method, header};

use crate::RelayState;
use crate::error::{RelayError, Tracking};
use crate::head_case::HeadCapture;
use crate::rendezvous::{self, WsRequest};
use crate::target::{Target, find_token};

/// Facts about the TCP connection a request came on, added by the server.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The peer's address.
    pub peer: SocketAddr,
    /// Whether TLS is in use.
    pub tls: bool,
    /// HTTP request mode: the listener's rendezvous kept for this connection's next requests.
    pub slot: crate::http::ChannelSlot,
    /// The connection's recent input, for header names as the client spelled them.
    pub capture: Arc<HeadCapture>,
}

/// The relay's router.
pub fn router(state: Arc<RelayState>) -> Router {
    Router::new().fallback(dispatch).with_state(state)
}

async fn dispatch(State(state): State<Arc<RelayState>>, req: Request) -> Response {
    let conn = req.extensions().get::<ConnInfo>().cloned().unwrap_or_else(|| ConnInfo {
        peer: SocketAddr::from(([0, 0, 0, 0], 0)),
        tls: false,
        slot: Default::default(),
        capture: Default::default(),
    });
    let names = conn.capture.names(req.method().as_str(), &req.uri().to_string());
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    let now = crate::now_unix();
    if let Some(hc_path) = address::hc_path(&path) {
        let tracking = rendezvous::tracking_for(&query, &host, hc_path, now);
        let r = WsRequest { host, path: hc_path.to_owned(), query, peer: conn.peer, tls: conn.tls, tracking, names, req };
        let response = rendezvous::handle(state, r).await;
        if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            conn.capture.stop();
        }
        return response;
    }
    let hc_path = path.trim_matches('/').to_owned();
    let tracking = rendezvous::tracking_for(&query, &host, &hc_path, now);
    if hc_path.is_empty() && req.method() == Method::GET {
        return banner();
    }
    if is_management_get(&req, &query) {
        return runtime_info(&state, &req, &host, &hc_path, &query, &tracking);
    }
    crate::http::handle(state, req, conn, host, hc_path, query, names).await
}

fn banner() -> Response {
    let mut r = Response::new(Body::from("Azure Relay Hybrid Connections emulator. WebSocket endpoints: /$hc/{hybrid-connection}\n"));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// A management GET carries `X-PROCESS-AT` or a Service Bus Atom `api-version` (§10).
fn is_management_get(req: &Request, query: &str) -> bool {
    let version = address::query_value(query, "api-version");
    req.method() == Method::GET
        && (req.headers().contains_key(HEADER_PROCESS_AT)
            || version.is_some_and(|v| runtime_info::MANAGEMENT_API_VERSIONS.contains(&v.as_str())))
}

/// The runtime-info Atom entry for a token with any right on the entity (§10, §3.4).
fn runtime_info(state: &RelayState, req: &Request, host: &str, hc_path: &str, query: &str, tracking: &Tracking) -> Response {
    let result = Target::resolve(&state.store.read(), host, hc_path).and_then(|t| {
        if !t.suffix.is_empty() {
            return Err(RelayError::EndpointNotFound);
        }
        let token = find_token(req.headers(), query).map(|t| t.0);
        t.authorize_any(token.as_deref(), tracking.now)?;
        Ok(t)
    });
    match result {
        Ok(t) => {
            let info = RuntimeInfo {
                namespace_host: crate::model::host_without_port(host),
                path: t.hc_name.clone(),
                created_at: t.created_at,
                updated_at: t.updated_at,
                requires_client_authorization: t.requires_client_authorization,
                user_metadata: t.user_metadata.clone(),
                listener_count: state.registry.listener_count(&t.key),
            };
            let mut r = Response::new(Body::from(info.to_atom()));
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(runtime_info::CONTENT_TYPE));
            r
        }
        Err(e) => xml_error(e, tracking),
    }
}

/// Management errors use the Service Bus XML shape `<Error><Code>…</Code><Detail>…</Detail></Error>` (§9.3).
fn xml_error(e: RelayError, tracking: &Tracking) -> Response {
    let status = e.status();
    let detail = runtime_info::xml_escape(&tracking.decorate(&e.to_string()));
    let mut r = e.into_response(tracking);
    *r.body_mut() = Body::from(format!("<Error><Code>{status}</Code><Detail>{detail}</Detail></Error>"));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/xml; charset=utf-8"));
    r
}
