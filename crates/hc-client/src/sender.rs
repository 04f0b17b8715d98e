//! The sender side (PROTOCOL.md §7): `connect` to a hybrid connection and get a WebSocket
//! whose listener is on the other end.

use hc_protocol::address::{self, Action, HEADER_SB_AUTHORIZATION};

use crate::error::Error;
use crate::handshake::WsStream;
use crate::relay::RelayEndpoint;
use crate::token::TokenProvider;

/// Connects to `path` (hybrid connection plus optional suffix) as a sender.
pub async fn connect(
    endpoint: &RelayEndpoint,
    path: &str,
    tokens: &TokenProvider,
    tracking_id: &str,
) -> Result<WsStream, Error> {
    let token = tokens.token(
        &endpoint.host,
        path.split('?').next().unwrap_or(path),
        endpoint.clock.unix_now(),
    )?;
    let url = address::endpoint_url(
        endpoint.ws_scheme(),
        &endpoint.authority(),
        path,
        Action::Connect,
        tracking_id,
    );
    let target = url
        .split_once(&endpoint.authority())
        .map(|(_, t)| t.to_owned())
        .unwrap_or_else(|| "/".into());
    let headers: Vec<(&str, &str)> = token
        .as_ref()
        .map(|t| (HEADER_SB_AUTHORIZATION, t.text.as_str()))
        .into_iter()
        .collect();
    match endpoint
        .upgrade(
            &endpoint.host,
            endpoint.port,
            &target,
            &endpoint.authority(),
            &headers,
        )
        .await?
    {
        Ok(ws) => Ok(ws),
        Err(head) => Err(Error::from_status(
            &format!("connecting to '{path}'"),
            head.status,
            &head.reason,
        )),
    }
}
