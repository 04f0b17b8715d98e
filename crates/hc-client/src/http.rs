//! Serving HTTP request mode as a listener (PROTOCOL.md §8, §5.2–§5.3): read a `request` and
//! its body, answer with a `response` and its body. Small answers (≤ 64 KiB) go on the control
//! channel; larger ones through a rendezvous opened with the request's address, as the .NET
//! listener does. Requests the relay sends by rendezvous (address-only `request`) are served
//! with [`serve_rendezvous`], which answers every request on that socket until it closes.

use hc_protocol::control::{
    self, Headers, ListenerCommand, RequestCommand, ResponseCommand, ServiceCommand,
};
use hc_protocol::frame::{CloseFrame, OpCode};
use hc_protocol::limits::MAX_CONTROL_BODY_BYTES;
use hc_ws::{Config, Message, Reader, Role, Writer};
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};

use crate::error::{Error, ErrorKind};
use crate::handshake::WsIo;
use crate::listener;
use crate::relay::RelayEndpoint;

/// Largest request body read into memory.
pub const MAX_BODY: usize = 64 * 1024 * 1024;

/// A request for this listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    /// Request id (answer with it).
    pub id: String,
    /// HTTP method.
    pub method: String,
    /// Path with the hybrid connection name, and the query.
    pub target: String,
    /// Headers.
    pub headers: Headers,
    /// Body.
    pub body: Vec<u8>,
    /// The rendezvous address for this request.
    pub address: String,
}

/// The answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Reason phrase (passed to the client exactly).
    pub reason: Option<String>,
    /// Headers.
    pub headers: Headers,
    /// Body.
    pub body: Vec<u8>,
}

impl HttpRequest {
    /// From a full `request` command and its body.
    pub fn from_command(command: RequestCommand, body: Vec<u8>) -> Self {
        HttpRequest {
            id: command.id.unwrap_or_default(),
            method: command.method.unwrap_or_default(),
            target: command.request_target.unwrap_or_default(),
            headers: command.request_headers.unwrap_or_default(),
            body,
            address: command.address,
        }
    }
}

fn response_json(request_id: &str, response: &HttpResponse) -> String {
    control::to_json(&ListenerCommand::Response(ResponseCommand {
        request_id: request_id.to_owned(),
        status_code: response.status,
        status_description: response.reason.clone(),
        response_headers: Some(response.headers.clone()),
        body: !response.body.is_empty(),
    }))
}

/// Writes a response (JSON, then the body as one binary message).
pub(crate) async fn write_response<W: AsyncWrite + Unpin>(
    w: &mut Writer<W>,
    request_id: &str,
    response: &HttpResponse,
) -> Result<(), Error> {
    w.send(OpCode::Text, response_json(request_id, response).as_bytes())
        .await?;
    if !response.body.is_empty() {
        w.send(OpCode::Binary, &response.body).await?;
    }
    Ok(())
}

/// Whether a response must go through a rendezvous instead of the control channel.
pub fn needs_rendezvous(response: &HttpResponse) -> bool {
    response.body.len() > MAX_CONTROL_BODY_BYTES
}

fn rendezvous_endpoint(
    ws: crate::handshake::WsStream,
) -> (Reader<ReadHalf<WsIo>>, Writer<WriteHalf<WsIo>>) {
    hc_ws::split(
        ws.io,
        Config::new(Role::Client).max_message(MAX_BODY).echo_close(),
    )
}

/// Answers `request` through a rendezvous opened with its address (for large responses).
pub async fn respond_via_rendezvous(
    endpoint: &RelayEndpoint,
    request: &HttpRequest,
    response: &HttpResponse,
) -> Result<(), Error> {
    let (_r, mut w) = rendezvous_endpoint(listener::accept(endpoint, &request.address).await?);
    write_response(&mut w, &request.id, response).await?;
    let _ = w.close(&CloseFrame::new(1000, "")).await;
    Ok(())
}

/// Opens the rendezvous of an address-only `request` and answers every request that arrives
/// on it with `handler`, until the relay closes it.
pub async fn serve_rendezvous(
    endpoint: &RelayEndpoint,
    address: &str,
    mut handler: impl FnMut(HttpRequest) -> HttpResponse,
) -> Result<(), Error> {
    let (mut reader, mut writer) = rendezvous_endpoint(listener::accept(endpoint, address).await?);
    loop {
        let Some(text) = next_data(&mut reader, &mut writer).await? else {
            break;
        };
        let Message::Text(text) = text else { continue }; // not a command
        let command = match ServiceCommand::parse(&text)
            .map_err(|e| Error::new(ErrorKind::Protocol, e.to_string()))?
        {
            control::Incoming::Known(ServiceCommand::Request(r)) => r,
            other => {
                return Err(Error::new(
                    ErrorKind::Protocol,
                    format!("expected a request on the rendezvous, got {other:?}"),
                ));
            }
        };
        let body = if command.body == Some(true) {
            match next_data(&mut reader, &mut writer).await? {
                Some(Message::Binary(b)) => b,
                Some(Message::Text(t)) => t.into_bytes(),
                _ => break,
            }
        } else {
            Vec::new()
        };
        let request = HttpRequest::from_command(command, body);
        let id = request.id.clone();
        let response = handler(request);
        write_response(&mut writer, &id, &response).await?;
    }
    writer.flush_control().await?;
    writer.shutdown().await;
    Ok(())
}

/// The next data message, sending queued Pongs on the way; `None` when the relay closes.
async fn next_data<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    reader: &mut Reader<R>,
    writer: &mut Writer<W>,
) -> Result<Option<Message>, Error> {
    loop {
        match reader.next_message().await? {
            Some(m @ (Message::Text(_) | Message::Binary(_))) => return Ok(Some(m)),
            Some(Message::Ping) => writer.flush_control().await?,
            Some(Message::Pong) => {}
            Some(Message::Close(_)) | None => return Ok(None),
        }
    }
}
