//! The relay's error type and the one place it meets the wire (PROTOCOL.md §9): an HTTP
//! status with the message as reason phrase (the SDKs put the reason phrase into exception
//! text), ending with the tracking text of §9.3, and a body in the shape each kind of
//! endpoint uses: plain text on the WebSocket endpoints, Service Bus XML on the management
//! GET (§9.3), JSON on HTTP request mode (§8.2, §8.3).

use axum::body::Body;
use axum::response::Response;
use hc_protocol::AuthError;
use hc_protocol::tracking;
use http::{StatusCode, header};

/// Everything a request to the relay can fail with.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum RelayError {
    /// The request is not what this endpoint takes.
    #[error("{0}")]
    BadRequest(String),
    /// No namespace answers to the Host header.
    #[error(
        "No namespace is configured for host '{0}'. Use a namespace's host ({{namespace}}.localhost or an alias) or localhost for the default namespace."
    )]
    UnknownHost(String),
    /// No hybrid connection at that path (§9.1).
    #[error("Endpoint does not exist.")]
    EndpointNotFound,
    /// A sender connected while no listener is (§6.1).
    #[error("There are no listeners connected for the endpoint.")]
    NoListeners,
    /// An HTTP request arrived while no listener is; the status is configurable (§8.1).
    #[error("There are no listeners connected for the endpoint.")]
    NoListenersHttp(u16),
    /// An HTTP client's request body paused longer than the HTTP timeout.
    #[error("The request body stopped arriving for longer than the allowed time.")]
    RequestBodyTimeout,
    /// The listener did not answer an HTTP request in time (§8.2).
    #[error(
        "The request was routed to the listener but the listener did not respond in the required time."
    )]
    HttpTimeout,
    /// Token refused (401) or right missing (403).
    #[error("{0}")]
    Auth(AuthError),
    /// The 26th listener (§5.1, §16 open question: 403 QuotaExceeded).
    #[error(
        "QuotaExceeded: MaximumListenersPerEndpoint: the hybrid connection already has {0} listeners."
    )]
    TooManyListeners(usize),
    /// The namespace's connection quota is used up.
    #[error("QuotaExceeded: the namespace already has {0} connections.")]
    TooManyConnections(usize),
    /// A rendezvous address that is unknown, used twice or expired (§9.1).
    #[error("The rendezvous address is invalid or has expired.")]
    RendezvousExpired,
    /// The listener did not open the rendezvous in time (§6.1 step 7).
    #[error("The listener did not accept the connection within the allowed timeout.")]
    ListenerTimeout,
    /// The listener rejected the connection; its status and description go to the sender as is.
    #[error("{description}")]
    Rejected {
        /// Status chosen by the listener.
        status: u16,
        /// Description chosen by the listener.
        description: String,
    },
    /// The sender went away before the listener joined.
    #[error("The sender is no longer waiting for this rendezvous.")]
    SenderGone,
    /// Too many rendezvous waiting at once.
    #[error("ServerBusy: too many connections are waiting for a listener.")]
    Busy,
    /// The relay is stopping.
    #[error("The relay is shutting down.")]
    ShuttingDown,
    /// An injected fault refused the request with this status and text.
    #[error("{text}")]
    Injected {
        /// The status chosen.
        status: u16,
        /// The reason phrase chosen.
        text: String,
    },
}

impl RelayError {
    /// The HTTP status for this error.
    pub(crate) fn status(&self) -> u16 {
        match self {
            RelayError::BadRequest(_) => 400,
            RelayError::UnknownHost(_) | RelayError::EndpointNotFound | RelayError::NoListeners => {
                404
            }
            RelayError::Auth(e) => e.status(),
            RelayError::TooManyListeners(_)
            | RelayError::TooManyConnections(_)
            | RelayError::RendezvousExpired => 403,
            RelayError::ListenerTimeout | RelayError::HttpTimeout => 504,
            RelayError::NoListenersHttp(status) => *status,
            RelayError::RequestBodyTimeout => 408,
            RelayError::Rejected { status, .. } => *status,
            RelayError::SenderGone => 410,
            RelayError::Busy | RelayError::ShuttingDown => 503,
            RelayError::Injected { status, .. } => *status,
        }
    }

    /// The response: status, reason phrase and a body in `format`. A listener's own reject
    /// text goes out unchanged; the relay's texts get the tracking suffix.
    pub(crate) fn render(self, tracking: &Tracking, format: ErrorFormat) -> Response {
        let status = self.status();
        let text = match &self {
            RelayError::Rejected { description, .. } => description.clone(),
            other => tracking.decorate(&other.to_string()),
        };
        let mut r = text_response(status, &text);
        let (body, content_type) = match format {
            ErrorFormat::Text => return r,
            ErrorFormat::Xml => {
                let detail =
                    hc_protocol::runtime_info::xml_escape(&tracking.decorate(&self.to_string()));
                (
                    format!("<Error><Code>{status}</Code><Detail>{detail}</Detail></Error>"),
                    "application/xml; charset=utf-8",
                )
            }
            ErrorFormat::Json => {
                let json =
                    serde_json::json!({"error": {"code": json_code(status), "message": text}});
                (json.to_string(), "application/json; charset=utf-8")
            }
        };
        *r.body_mut() = Body::from(body);
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static(content_type),
        );
        r
    }
}

/// The body shape of an error answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorFormat {
    /// Plain text (WebSocket endpoints; the SDKs read the reason phrase).
    Text,
    /// `<Error><Code>…</Code><Detail>…</Detail></Error>` (management GET, §9.3).
    Xml,
    /// `{"error":{"code":…,"message":…}}` (HTTP request mode, §8.2, §8.3).
    Json,
}

/// The `error.code` of HTTP request mode's JSON bodies.
fn json_code(status: u16) -> &'static str {
    match status {
        401 => "TokenMissingOrInvalid",
        403 => "Forbidden",
        404 => "EndpointNotFound",
        405 => "MethodNotAllowed",
        408 => "RequestTimeout",
        502 => "BadGateway",
        503 => "ServerBusy",
        504 => "GatewayTimeout",
        _ => "BadRequest",
    }
}

impl RelayError {}

impl From<AuthError> for RelayError {
    fn from(e: AuthError) -> Self {
        RelayError::Auth(e)
    }
}

/// What the tracking text of one request says (§9.3).
#[derive(Debug, Clone)]
pub(crate) struct Tracking {
    /// `{sb-hc-id or generated}_G0`.
    pub id: String,
    /// `sb://{ns-host}/{path}`.
    pub system_tracker: String,
    /// Unix seconds.
    pub now: u64,
}

impl Tracking {
    /// The tracking text of a request: `{sb-hc-id or a new GUID}_G0`, `sb://{host}/{path}`.
    pub(crate) fn for_request(query: &str, host: &str, path: &str, now: u64) -> Tracking {
        let client_id = hc_protocol::address::query_value(query, hc_protocol::address::QUERY_ID);
        let id = tracking::tracking_id(client_id.as_deref(), || {
            tracking::guid_from_bytes(rand::random())
        });
        Tracking {
            id,
            system_tracker: tracking::system_tracker(&crate::model::host_without_port(host), path),
            now,
        }
    }

    /// `{message} TrackingId:…, SystemTracker:…, Timestamp:…`.
    pub(crate) fn decorate(&self, message: &str) -> String {
        tracking::with_tracking(message, &self.id, &self.system_tracker, self.now)
    }
}

/// A response whose reason phrase and plain-text body are `text`.
pub(crate) fn text_response(status: u16, text: &str) -> Response {
    let status_code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = Response::new(Body::from(text.to_owned()));
    *response.status_mut() = status_code;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Ok(reason) = hyper::ext::ReasonPhrase::try_from(reason_phrase(text)) {
        response.extensions_mut().insert(reason);
    }
    response
}

/// A reason phrase may not hold control characters; replace them with spaces.
fn reason_phrase(text: &str) -> Vec<u8> {
    text.bytes()
        .map(|b| {
            if b == b'\t' || (b >= 0x20 && b != 0x7f) {
                b
            } else {
                b' '
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_reasons() {
        let t = Tracking {
            id: "abc_G0".into(),
            system_tracker: "sb://default.localhost/hyco".into(),
            now: 1_700_000_000,
        };
        let r = RelayError::EndpointNotFound.render(&t, ErrorFormat::Text);
        assert_eq!(r.status(), 404);
        let reason = r.extensions().get::<hyper::ext::ReasonPhrase>().unwrap();
        assert_eq!(
            reason.as_bytes(),
            b"Endpoint does not exist. TrackingId:abc_G0, SystemTracker:sb://default.localhost/hyco, Timestamp:2023-11-14T22:13:20"
        );
        let r = RelayError::Rejected {
            status: 401,
            description: "go\r\naway".into(),
        }
        .render(&t, ErrorFormat::Text);
        assert_eq!(
            (
                r.status().as_u16(),
                r.extensions()
                    .get::<hyper::ext::ReasonPhrase>()
                    .unwrap()
                    .as_bytes()
            ),
            (401, &b"go  away"[..])
        );
        assert_eq!(
            RelayError::Auth(AuthError::MissingRight(hc_protocol::Right::Listen)).status(),
            403
        );
        assert_eq!(RelayError::ListenerTimeout.status(), 504);
    }

    #[tokio::test]
    async fn every_format_carries_the_tracked_message() {
        use http_body_util::BodyExt as _;
        let t = Tracking {
            id: "abc_G0".into(),
            system_tracker: "localhost:hyco".into(),
            now: 1_700_000_000,
        };
        for (format, starts) in [
            (ErrorFormat::Text, "There are"),
            (ErrorFormat::Xml, "<Error><Code>404</Code><Detail>There are"),
            (
                ErrorFormat::Json,
                "{\"error\":{\"code\":\"EndpointNotFound\"",
            ),
        ] {
            let r = RelayError::NoListeners.render(&t, format);
            assert_eq!(r.status(), 404);
            let body =
                String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec())
                    .unwrap();
            assert!(
                body.starts_with(starts) && body.contains("TrackingId:abc_G0"),
                "{format:?}: {body}"
            );
        }
    }
}
