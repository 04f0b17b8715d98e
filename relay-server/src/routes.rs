//! Request routing: one handler for every path, which picks the endpoint by path (the
//! namespace is picked by Host further in):
//!
//! - `/$hc/{path}` -> WebSocket actions ([`crate::rendezvous`]);
//! - `GET /{hc}?api-version=2016-07` or with `X-PROCESS-AT` -> runtime info (§10,
//!   [`crate::runtime_info`]);
//! - `/$faults…` -> the fault-injection API ([`crate::faults_api`]);
//! - `/$status…`, `/healthz`, `/readyz`, `/metrics` -> health, metrics and the status page
//!   ([`crate::status`]; the short paths yield to a hybrid connection of that name);
//! - `GET /` -> a one-line description of the emulator;
//! - any other `/{hc}/...` -> HTTP request mode ([`crate::http`]).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use hc_protocol::address::{self, HEADER_PROCESS_AT};
use hc_protocol::runtime_info;
use http::{HeaderValue, Method, header};

use crate::error::Tracking;
use crate::http::ConnInfo;
use crate::rendezvous::{self, WsRequest};
use crate::state::RelayState;

/// The relay's router.
pub(crate) fn router(state: Arc<RelayState>) -> Router {
    Router::new().fallback(dispatch).with_state(state)
}

async fn dispatch(State(state): State<Arc<RelayState>>, req: Request) -> Response {
    let conn = req
        .extensions()
        .get::<ConnInfo>()
        .cloned()
        .unwrap_or_else(|| ConnInfo {
            peer: SocketAddr::from(([0, 0, 0, 0], 0)),
            tls: false,
            slot: Default::default(),
            capture: Default::default(),
        });
    let names = conn
        .capture
        .names(req.method().as_str(), &req.uri().to_string());
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    let now = state.options.clock.unix_now();
    if let Some(sub) = crate::faults_api::sub_path(&path) {
        let sub = sub.to_owned();
        return crate::faults_api::handle(&state, req, conn.peer, &host, &sub, &query).await;
    }
    if let Some(r) = crate::status::route(&state, &req, conn.peer, &host, &path, &query) {
        return r.answer(&state).await;
    }
    if let Some(hc_path) = address::hc_path(&path) {
        let tracking = Tracking::for_request(&query, &host, hc_path, now);
        let r = WsRequest {
            host,
            path: hc_path.to_owned(),
            query,
            peer: conn.peer,
            tls: conn.tls,
            tracking,
            names,
            req,
        };
        let response = rendezvous::handle(state, r).await;
        if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            conn.capture.stop();
        }
        return response;
    }
    let hc_path = path.trim_matches('/').to_owned();
    let tracking = Tracking::for_request(&query, &host, &hc_path, now);
    if hc_path.is_empty() && req.method() == Method::GET {
        return banner();
    }
    if is_management_get(&req, &query) {
        return crate::runtime_info::answer(&state, &req, &host, &hc_path, &query, &tracking);
    }
    crate::http::handle(state, req, conn, host, hc_path, query, names).await
}

fn banner() -> Response {
    let mut r = Response::new(Body::from(
        "Azure Relay Hybrid Connections emulator. WebSocket endpoints: /$hc/{hybrid-connection}\n",
    ));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// A management GET carries `X-PROCESS-AT` or a Service Bus Atom `api-version` (§10).
fn is_management_get(req: &Request, query: &str) -> bool {
    let version = address::query_value(query, "api-version");
    req.method() == Method::GET
        && (req.headers().contains_key(HEADER_PROCESS_AT)
            || version.is_some_and(|v| runtime_info::MANAGEMENT_API_VERSIONS.contains(&v.as_str())))
}
