//! The server side of the WebSocket handshake: upgrade checks and the 101 answer (RFC 6455
//! §4.2). Everything after the handshake is `hc_ws`'s endpoint.

use axum::body::Body;
use axum::response::Response;
use hc_protocol::frame;
use http::{HeaderMap, HeaderValue, StatusCode, header};

use crate::error::RelayError;

/// What a client asked for in its upgrade request.
#[derive(Debug, Clone)]
pub(crate) struct Upgrade {
    /// `Sec-WebSocket-Key`.
    pub key: String,
    /// Offered sub-protocols, in order.
    pub protocols: Vec<String>,
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Checks the RFC 6455 upgrade headers; the error names the missing one.
pub(crate) fn check_upgrade(headers: &HeaderMap) -> Result<Upgrade, RelayError> {
    let bad = |what: &str| {
        RelayError::BadRequest(format!(
            "This endpoint takes WebSocket upgrades only: {what}."
        ))
    };
    if !header_has_token(headers, header::UPGRADE, "websocket") {
        return Err(bad("missing 'Upgrade: websocket'"));
    }
    if !header_has_token(headers, header::CONNECTION, "upgrade") {
        return Err(bad("missing 'Connection: Upgrade'"));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        != Some("13")
    {
        return Err(bad("'Sec-WebSocket-Version' must be 13"));
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .unwrap_or_default();
    if key.is_empty() {
        return Err(bad("missing 'Sec-WebSocket-Key'"));
    }
    let protocols = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect();
    Ok(Upgrade {
        key: key.to_owned(),
        protocols,
    })
}

/// The 101 answer: accept key, the chosen sub-protocol if any, never an extension (§6.3).
pub(crate) fn switching_protocols(key: &str, protocol: Option<&str>) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&frame::accept_key(key)) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if let Some(p) = protocol.and_then(|p| HeaderValue::from_str(p).ok()) {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, p);
    }
    response
}
