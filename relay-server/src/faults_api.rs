//! The fault-injection REST API (README "Testing your app's resilience"), on the relay's
//! own port next to the status page and with the same access rules: loopback clients need no
//! credentials, others a SAS token with Manage rights (then only that namespace's faults) or
//! a management bearer token issued by this relay, unless the relay runs with
//! `--status-open`.
//!
//! - `GET /$faults`: `{"faults": [active…], "ended": [the last 50 that ended…]}`
//! - `POST /$faults` with a fault's JSON ([`crate::fault::FaultSpec`]): 201 and the fault
//! - `DELETE /$faults`: clears every fault (a Manage token: those of its namespace, never
//!   one that covers every namespace): 200 and them
//! - `GET /$faults/{id}`, `DELETE /$faults/{id}`: one fault, 404 when unknown
//!
//! Errors are `{"error": {"code": …, "message": …}}` with 400 (the message names the field),
//! 401/403 (access), 404 (no such namespace, hybrid connection, tunnel or fault), 405, 409
//! (too many faults active) and 413 (a body over 64 KiB).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use http::{HeaderValue, Method, StatusCode, header};
use http_body_util::BodyExt as _;
use serde_json::json;

use crate::fault::{FaultError, FaultInfo, FaultSpec};
use crate::state::RelayState;
use crate::status::{self, Scope};

/// Largest fault body accepted.
const MAX_BODY: usize = 64 * 1024;

/// The part after `/$faults` when `path` is the API's (`""` or `/{id}`).
pub(crate) fn sub_path(path: &str) -> Option<&str> {
    match hc_protocol::address::dollar_path(path, "faults")? {
        "/" => Some(""),
        rest => Some(rest),
    }
}

/// Serves one request to the API.
pub(crate) async fn handle(
    state: &Arc<RelayState>,
    req: Request,
    peer: SocketAddr,
    host: &str,
    sub: &str,
    query: &str,
) -> Response {
    let scope = match status::access(state, &req, peer, host, query) {
        Ok(scope) => scope,
        Err((code, why)) => return status::refuse(code, &why),
    };
    let method = req.method().clone();
    let id = sub.trim_start_matches('/');
    match (&method, id.is_empty()) {
        (&Method::GET, true) => {
            let (active, ended) = state.faults.list();
            let keep = |f: &FaultInfo| visible(&scope, f);
            status::json_response(&json!({
                "faults": active.into_iter().filter(keep).collect::<Vec<_>>(),
                "ended": ended.into_iter().filter(keep).collect::<Vec<_>>(),
            }))
        }
        (&Method::POST, true) => add(state, req, &scope).await,
        (&Method::DELETE, true) => {
            let lift = match &scope {
                Scope::All => None,
                Scope::Namespace(ns) => Some(ns.as_str()),
            };
            let cleared = state.faults.clear(|f| owned(&scope, f), lift);
            state.faults.forget_ended(|f| owned(&scope, f));
            status::json_response(&json!({ "cleared": cleared }))
        }
        (&Method::GET, false) => match state.faults.get(id).filter(|f| visible(&scope, f)) {
            Some(f) => status::json_response(&json!(f)),
            None => error(
                StatusCode::NOT_FOUND,
                "FaultNotFound",
                &format!("no fault '{id}'"),
            ),
        },
        (&Method::DELETE, false) => {
            let Some(found) = state.faults.get(id).filter(|f| visible(&scope, f)) else {
                return error(
                    StatusCode::NOT_FOUND,
                    "FaultNotFound",
                    &format!("no fault '{id}'"),
                );
            };
            if !owned(&scope, &found) {
                return error(
                    StatusCode::FORBIDDEN,
                    "Forbidden",
                    &format!(
                        "fault '{id}' covers every namespace: only a client on the relay's machine or with a management token may clear it"
                    ),
                );
            }
            // Cleared even when it already ended: what its count left on tunnels is lifted.
            let cleared = state
                .faults
                .clear(|f| f.id == id, found.spec.namespace.as_deref());
            status::json_response(&json!(cleared.into_iter().next().unwrap_or(found)))
        }
        _ => {
            let mut r = error(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                &format!(
                    "{method} is not served here: GET, POST and DELETE /$faults; GET and DELETE /$faults/{{id}}"
                ),
            );
            let allow = if id.is_empty() {
                "GET, POST, DELETE"
            } else {
                "GET, DELETE"
            };
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
            r
        }
    }
}

/// Whether a caller limited to one namespace may see `f`.
fn visible(scope: &Scope, f: &FaultInfo) -> bool {
    scope.sees_fault(f.spec.namespace.as_deref())
}

/// Whether a caller may clear `f`: a caller limited to one namespace only its own faults,
/// never one that covers every namespace (clearing it would change other tenants' service).
fn owned(scope: &Scope, f: &FaultInfo) -> bool {
    match scope {
        Scope::All => true,
        Scope::Namespace(_) => f.spec.namespace.as_deref().is_some_and(|n| scope.covers(n)),
    }
}

async fn add(state: &Arc<RelayState>, req: Request, scope: &Scope) -> Response {
    let body = match http_body_util::Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "BodyTooLarge",
                &format!("a fault's JSON must be at most {MAX_BODY} bytes"),
            );
        }
    };
    let mut spec: FaultSpec = match serde_json::from_slice(&body) {
        Ok(s) => s,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "InvalidFault",
                &format!("the body is not a fault: {e}"),
            );
        }
    };
    if let Scope::Namespace(ns) = scope {
        match &spec.namespace {
            None => spec.namespace = Some(ns.clone()),
            Some(n) if scope.covers(n) => {}
            Some(n) => {
                return error(
                    StatusCode::FORBIDDEN,
                    "Forbidden",
                    &format!("the token is for namespace '{ns}', not '{n}'"),
                );
            }
        }
    }
    match crate::fault::add(state, spec) {
        Ok(info) => {
            let mut r = status::json_response(&json!(info));
            *r.status_mut() = StatusCode::CREATED;
            if let Ok(v) = HeaderValue::from_str(&format!("/$faults/{}", info.id)) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            r
        }
        Err(e) => {
            let code = match &e {
                FaultError::Invalid(_) => "InvalidFault",
                FaultError::NotFound(_) => "NotFound",
                FaultError::TooMany => "TooManyFaults",
            };
            error(
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST),
                code,
                &e.to_string(),
            )
        }
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let mut r = Response::new(Body::from(
        json!({"error": {"code": code, "message": message}}).to_string(),
    ));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_paths() {
        assert_eq!(sub_path("/$faults"), Some(""));
        assert_eq!(sub_path("/%24faults/"), Some(""));
        assert_eq!(sub_path("/$faults/f3"), Some("/f3"));
        assert_eq!(sub_path("/$faultsx"), None);
        assert_eq!(sub_path("/faults"), None);
    }
}
