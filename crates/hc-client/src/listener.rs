//! The listener side (PROTOCOL.md §5): open a control channel, read `accept` commands, renew
//! the token, answer pings; then join a rendezvous (accept) or refuse it (reject, §6.2).

use std::time::Duration;

use hc_protocol::address::{self, Action, HEADER_SB_AUTHORIZATION};
use hc_protocol::control::{
    self, AcceptCommand, Incoming, ListenerCommand, RenewTokenCommand, RequestCommand,
    ServiceCommand,
};
use hc_protocol::frame::{CloseFrame, OpCode};
use hc_protocol::limits::MAX_CONTROL_MESSAGE_BYTES;
use hc_ws::{Config, Message, Reader, Role, Writer};
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};

use crate::error::{Error, ErrorKind};
use crate::handshake::{self, WsIo, WsStream};
use crate::relay::RelayEndpoint;
use crate::token::{Token, TokenProvider};

/// What a listener needs to connect.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// The namespace.
    pub endpoint: RelayEndpoint,
    /// Hybrid connection path.
    pub path: String,
    /// Token source (needs Listen).
    pub tokens: TokenProvider,
    /// `sb-hc-id` to use.
    pub tracking_id: String,
}

/// Something that happened on the control channel.
#[derive(Debug)]
pub enum ControlEvent {
    /// A sender waits.
    Accept(AcceptCommand),
    /// An HTTP request: a full one (read its body with [`ControlChannel::read_request`]) or an
    /// address-only one (serve it with [`crate::http::serve_rendezvous`]).
    Request(RequestCommand),
    /// The relay pinged; its Pong is queued (see [`ControlChannel::control_ready`]).
    Ping,
    /// The relay closed the channel (its Close is echoed by [`ControlChannel::flush_control`]).
    Closed {
        /// Close code, if any.
        code: Option<u16>,
        /// Close reason.
        reason: String,
    },
    /// Something this listener does not act on (a pong, a binary message, an unknown command).
    Ignored(String),
}

/// An open control channel: a client endpoint over the relay's socket (any socket in tests).
#[derive(Debug)]
pub struct ControlChannel<IO = WsIo> {
    reader: Reader<ReadHalf<IO>>,
    writer: Writer<WriteHalf<IO>>,
    /// Expiry of the token in use, Unix seconds.
    pub expires_at: u64,
}

/// Longest time one write to the relay may take before the channel counts as broken.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

impl ControlChannel<WsIo> {
    /// Opens the channel: `GET /$hc/{path}?sb-hc-action=listen&sb-hc-id=…` with the token in
    /// `ServiceBusAuthorization`.
    pub async fn open(config: &ListenerConfig) -> Result<Self, Error> {
        let token = config.tokens.token(
            &config.endpoint.host,
            &config.path,
            config.endpoint.clock.unix_now(),
        )?;
        let token = token
            .ok_or_else(|| Error::new(ErrorKind::Config, "a listener needs a key or a token"))?;
        let url = address::endpoint_url(
            config.endpoint.ws_scheme(),
            &config.endpoint.authority(),
            &config.path,
            Action::Listen,
            &config.tracking_id,
        );
        let io = config.endpoint.open_namespace().await?;
        let target = url_target(&url);
        let ws = match handshake::upgrade(
            io,
            &target,
            &config.endpoint.authority(),
            &[(HEADER_SB_AUTHORIZATION, &token.text)],
        )
        .await?
        {
            Ok(ws) => ws,
            Err(head) => {
                return Err(Error::from_status(
                    &format!("listening on '{}'", config.path),
                    head.status,
                    &head.reason,
                ));
            }
        };
        Ok(ControlChannel::from_io(ws.io, token.expires_at))
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send> ControlChannel<IO> {
    /// A control channel over an upgraded socket whose token expires at `expires_at`.
    pub fn from_io(io: IO, expires_at: u64) -> Self {
        let config = Config::new(Role::Client)
            .max_message(MAX_CONTROL_MESSAGE_BYTES)
            .write_timeout(Some(WRITE_TIMEOUT))
            .echo_close();
        let (reader, writer) = hc_ws::split(io, config);
        ControlChannel {
            reader,
            writer,
            expires_at,
        }
    }

    /// The next event. Cancel-safe, and never writes: queued Pongs and the Close echo go out
    /// with [`ControlChannel::flush_control`].
    pub async fn next_event(&mut self) -> Result<ControlEvent, Error> {
        let Some(message) = self.reader.next_message().await? else {
            return Err(Error::new(
                ErrorKind::Network,
                "relay closed the control channel without a close frame",
            ));
        };
        Ok(match message {
            Message::Text(text) => match ServiceCommand::parse(&text) {
                Ok(Incoming::Known(ServiceCommand::Accept(a))) => ControlEvent::Accept(a),
                Ok(Incoming::Known(ServiceCommand::Request(r))) => ControlEvent::Request(r),
                Ok(Incoming::Unknown(name)) => {
                    ControlEvent::Ignored(format!("unknown command '{name}'"))
                }
                Err(e) => return Err(Error::new(ErrorKind::Protocol, e.to_string())),
            },
            Message::Binary(_) => ControlEvent::Ignored("binary message".into()),
            Message::Ping => ControlEvent::Ping,
            Message::Pong => ControlEvent::Ignored("pong".into()),
            Message::Close(c) => ControlEvent::Closed {
                code: c.code,
                reason: c.reason,
            },
        })
    }

    /// Completes when a Pong or the Close echo waits to be sent; then call
    /// [`ControlChannel::flush_control`]. Holds no borrow of the channel.
    pub fn control_ready(&self) -> impl Future<Output = ()> + Send + 'static {
        self.writer.control_ready()
    }

    /// Sends the queued Pongs and Close echo.
    pub async fn flush_control(&mut self) -> Result<(), Error> {
        Ok(self.writer.flush_control().await?)
    }

    /// Sends a keep-alive ping (§5.4).
    pub async fn ping(&mut self) -> Result<(), Error> {
        Ok(self.writer.ping(b"hc").await?)
    }

    /// Sends `renewToken` with a fresh token (§5.3) and records its expiry.
    pub async fn renew(&mut self, token: Token) -> Result<(), Error> {
        let json = control::to_json(&ListenerCommand::RenewToken(RenewTokenCommand {
            token: token.text,
        }));
        self.writer.send(OpCode::Text, json.as_bytes()).await?;
        self.expires_at = token.expires_at;
        Ok(())
    }

    /// For a full request: reads the body message that follows it (when `body` is true).
    pub async fn read_request(
        &mut self,
        command: RequestCommand,
    ) -> Result<crate::http::HttpRequest, Error> {
        let body = if command.body == Some(true) {
            loop {
                match self.reader.next_message().await? {
                    Some(Message::Binary(b)) => break b,
                    Some(Message::Text(t)) => break t.into_bytes(),
                    Some(Message::Ping | Message::Pong) => continue,
                    other => {
                        return Err(Error::new(
                            ErrorKind::Protocol,
                            format!("expected the request body, got {other:?}"),
                        ));
                    }
                }
            }
        } else {
            Vec::new()
        };
        Ok(crate::http::HttpRequest::from_command(command, body))
    }

    /// Answers a request: on this control channel when the body fits in 64 KiB, else through
    /// a rendezvous with the request's address.
    pub async fn respond(
        &mut self,
        endpoint: &RelayEndpoint,
        request: &crate::http::HttpRequest,
        response: &crate::http::HttpResponse,
    ) -> Result<(), Error> {
        if crate::http::needs_rendezvous(response) {
            let (endpoint, request, response) =
                (endpoint.clone(), request.clone(), response.clone());
            tokio::spawn(async move {
                crate::http::respond_via_rendezvous(&endpoint, &request, &response).await
            });
            return Ok(());
        }
        crate::http::write_response(&mut self.writer, &request.id, response).await
    }

    /// Closes the channel: Close, the relay's Close (2 s at most), then TCP.
    pub async fn close(mut self, code: u16, reason: &str) {
        let _ = self.writer.close(&CloseFrame::new(code, reason)).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Ok(Some(m)) = self.reader.next_message().await {
                if matches!(m, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
        self.writer.shutdown().await;
    }
}

/// `path?query` of a URL.
fn url_target(url: &str) -> String {
    match hc_protocol::uri::parse(url) {
        Ok(p) => match p.query {
            Some(q) => format!("{}?{q}", p.path),
            None => p.path.to_owned(),
        },
        Err(_) => "/".into(),
    }
}

/// Opens `address` (from `accept`) as given; answers with the head when it is not a 101.
async fn open_address(
    endpoint: &RelayEndpoint,
    address: &str,
) -> Result<(Result<WsStream, handshake::Head>, String), Error> {
    let parts = hc_protocol::uri::parse(address)
        .map_err(|e| Error::new(ErrorKind::Protocol, format!("bad rendezvous address: {e}")))?;
    let port = parts
        .port
        .unwrap_or(if endpoint.tls.is_some() { 443 } else { 80 });
    let authority = match parts.port {
        Some(p) => format!("{}:{p}", parts.host),
        None => parts.host.to_owned(),
    };
    Ok((
        endpoint
            .upgrade(parts.host, port, &url_target(address), &authority, &[])
            .await?,
        authority,
    ))
}

/// Joins the rendezvous at `address` (§6.1 step 5); no token is sent (capability URL).
pub async fn accept(endpoint: &RelayEndpoint, address: &str) -> Result<WsStream, Error> {
    match open_address(endpoint, address).await?.0 {
        Ok(ws) => Ok(ws),
        Err(head) => Err(Error::from_status(
            "joining the rendezvous",
            head.status,
            &head.reason,
        )),
    }
}

/// Refuses the connection offered at `address`: the sender gets `status` and `description`,
/// the relay answers 410 (§6.2).
pub async fn reject(
    endpoint: &RelayEndpoint,
    address: &str,
    status: u16,
    description: &str,
) -> Result<(), Error> {
    let mut url = address.to_owned();
    address::append_query(&mut url, address::QUERY_STATUS_CODE, &status.to_string());
    address::append_query(&mut url, address::QUERY_STATUS_DESCRIPTION, description);
    match open_address(endpoint, &url).await?.0 {
        Err(head) if head.status == 410 => Ok(()),
        Err(head) => Err(Error::from_status("rejecting", head.status, &head.reason)),
        Ok(_) => Err(Error::new(
            ErrorKind::Protocol,
            "the relay accepted a reject as a connection",
        )),
    }
}

#[cfg(test)]
mod tests {
    //! The listener's control channel against a relay-side endpoint driven by the test.

    use super::*;
    use hc_ws::Item;

    #[tokio::test]
    async fn events_pongs_renewal_and_close() {
        let (relay_io, listener_io) = tokio::io::duplex(512);
        let mut channel = ControlChannel::from_io(listener_io, 100);
        let (mut rr, mut rw) = hc_ws::split(relay_io, Config::new(Role::Server));
        let accept = r#"{"accept":{"address":"wss://h/$hc/a?sb-hc-action=accept&sb-hc-id=1","id":"1","connectHeaders":{"Sec-WebSocket-Key":"k"},"remoteEndpoint":{"address":"127.0.0.1","port":1}}}"#;
        rw.send(OpCode::Text, accept.as_bytes()).await.unwrap();
        rw.send(OpCode::Text, br#"{"somethingNew":{}}"#)
            .await
            .unwrap();
        rw.ping(b"p").await.unwrap();
        assert!(
            matches!(channel.next_event().await.unwrap(), ControlEvent::Accept(a) if a.id == "1")
        );
        assert!(
            matches!(channel.next_event().await.unwrap(), ControlEvent::Ignored(w) if w.contains("somethingNew"))
        );
        assert!(matches!(
            channel.next_event().await.unwrap(),
            ControlEvent::Ping
        ));
        channel.control_ready().await;
        channel.flush_control().await.unwrap();
        assert_eq!(rr.next_item().await.unwrap(), Some(Item::Pong));
        channel
            .renew(Token {
                text: "SharedAccessSignature sr=x&sig=y&se=200&skn=z".into(),
                expires_at: 200,
            })
            .await
            .unwrap();
        assert_eq!(channel.expires_at, 200);
        let renew = rr.next_message().await.unwrap();
        assert!(
            matches!(renew, Some(Message::Text(t)) if t.starts_with(r#"{"renewToken":{"token":"SharedAccessSignature"#))
        );
        // The relay closes (token expired): the channel reports it and echoes the Close.
        rw.close(&CloseFrame::new(1008, "ExpiredToken"))
            .await
            .unwrap();
        assert!(matches!(
            channel.next_event().await.unwrap(),
            ControlEvent::Closed {
                code: Some(1008),
                ..
            }
        ));
        channel.flush_control().await.unwrap();
        assert_eq!(
            rr.next_message().await.unwrap(),
            Some(Message::Close(CloseFrame::new(1008, "ExpiredToken")))
        );
    }
}
