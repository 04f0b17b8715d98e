//! The runtime-info GET (PROTOCOL.md §10) that Microsoft's HCM uses to learn the endpoint
//! from `userMetadata`: `GET /{hc}?api-version=2016-07` with `X-PROCESS-AT: ServiceBus`.

use hc_protocol::runtime_info::RuntimeInfo;

use crate::error::{Error, ErrorKind};
use crate::handshake;
use crate::relay::RelayEndpoint;
use crate::token::TokenProvider;

/// What the relay says about a hybrid connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeInformation {
    /// Whether senders need a token.
    pub requires_client_authorization: bool,
    /// The `userMetadata` text.
    pub user_metadata: Option<String>,
    /// Listeners connected now.
    pub listener_count: usize,
}

/// Reads the runtime information of `path` (any right will do).
pub async fn get(endpoint: &RelayEndpoint, path: &str, tokens: &TokenProvider) -> Result<RuntimeInformation, Error> {
    let token = tokens.token(&endpoint.host, path, crate::now_unix())?;
    let mut headers = vec![("X-PROCESS-AT", "ServiceBus")];
    if let Some(t) = &token {
        headers.push(("Authorization", t.text.as_str()));
    }
    let io = endpoint.open_namespace().await?;
    let (head, body) = handshake::http_get(io, &format!("/{path}?api-version=2016-07"), &endpoint.authority(), &headers).await?;
    let body = String::from_utf8_lossy(&body);
    match head.status {
        200 => {
            let (rca, user_metadata, listener_count) = RuntimeInfo::parse_atom(&body).ok_or_else(|| {
                Error::new(
                    ErrorKind::EndpointNotFound,
                    format!("runtime info for '{path}': the relay's answer is not a hybrid connection entry"),
                )
            })?;
            Ok(RuntimeInformation { requires_client_authorization: rca, user_metadata, listener_count })
        }
        status => Err(Error::from_status(&format!("runtime info for '{path}'"), status, &detail(&body, &head.reason))),
    }
}

/// The `<Detail>` of a Service Bus XML error, else the reason phrase.
fn detail(body: &str, reason: &str) -> String {
    let start = body.find("<Detail>").map(|i| i + "<Detail>".len());
    let end = body.find("</Detail>");
    match (start, end) {
        (Some(s), Some(e)) if s <= e => body[s..e].to_owned(),
        _ => reason.to_owned(),
    }
}
