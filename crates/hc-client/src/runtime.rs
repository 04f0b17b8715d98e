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
pub async fn get(
    endpoint: &RelayEndpoint,
    path: &str,
    tokens: &TokenProvider,
) -> Result<RuntimeInformation, Error> {
    let token = tokens.token(&endpoint.host, path, endpoint.clock.unix_now())?;
    let mut headers = vec![("X-PROCESS-AT", "ServiceBus")];
    if let Some(t) = &token {
        headers.push(("Authorization", t.text.as_str()));
    }
    let io = endpoint.open_namespace().await?;
    let (head, body) = handshake::http_get(
        io,
        &format!("/{path}?api-version=2016-07"),
        &endpoint.authority(),
        &headers,
    )
    .await?;
    let body = String::from_utf8_lossy(&body);
    match head.status {
        200 => {
            let fields = RuntimeInfo::parse_atom(&body).ok_or_else(|| {
                Error::new(
                    ErrorKind::EndpointNotFound,
                    format!("runtime info for '{path}': the relay's answer is not a hybrid connection entry"),
                )
            })?;
            Ok(RuntimeInformation {
                requires_client_authorization: fields.requires_client_authorization,
                user_metadata: fields.user_metadata,
                listener_count: fields.listener_count,
            })
        }
        status => Err(Error::from_status(
            &format!("runtime info for '{path}'"),
            status,
            &detail(&body, &head.reason),
        )),
    }
}

/// The `<Detail>` of a Service Bus XML error (§9.3), else the reason phrase.
fn detail(body: &str, reason: &str) -> String {
    roxmltree::Document::parse(body)
        .ok()
        .and_then(|doc| {
            doc.descendants()
                .find(|n| n.tag_name().name() == "Detail")
                .and_then(|n| n.text().map(str::to_owned))
        })
        .unwrap_or_else(|| reason.to_owned())
}
