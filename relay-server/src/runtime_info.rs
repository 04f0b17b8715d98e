//! The data-plane management GET (PROTOCOL.md §10): `GET /{hc}?api-version=2016-07` (or
//! with `X-PROCESS-AT`) answers the Atom entry with the hybrid connection's runtime
//! information, for a token with any right on it (§3.4). Microsoft's HCM reads the endpoint
//! from its `UserMetadata`.

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use hc_protocol::runtime_info::{self, RuntimeInfo};
use http::{HeaderValue, header};

use crate::error::{ErrorFormat, RelayError, Tracking};
use crate::state::RelayState;
use crate::target::{Target, find_token};

/// The runtime-info Atom entry, or the error in Service Bus XML.
pub(crate) fn answer(
    state: &RelayState,
    req: &Request,
    host: &str,
    hc_path: &str,
    query: &str,
    tracking: &Tracking,
) -> Response {
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
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(runtime_info::CONTENT_TYPE),
            );
            r
        }
        Err(e) => e.render(tracking, ErrorFormat::Xml),
    }
}
