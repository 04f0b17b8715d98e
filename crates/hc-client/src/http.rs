//! Serving HTTP request mode as a listener (PROTOCOL.md §8, §5.2–§5.3): read a `request` and
//! its body, answer with a `response` and its body. Small answers (≤ 64 KiB) go on the control
//! channel; larger ones through a rendezvous opened with the request's address, as the .NET
//! listener does. Requests the relay sends by rendezvous (address-only `request`) are served
//! with [`serve_rendezvous`], which answers every request on that socket until it closes.

use hc_protocol::control::{self, Headers, ListenerCommand, RequestCommand, ResponseCommand, ServiceCommand};
use hc_protocol::frame::{CloseFrame, OpCode};
use hc_protocol::limits::MAX_CONTROL_BODY_BYTES;
use hc_ws::{FrameReader, Peer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};

use crate::error::{Error, ErrorKind};
use crate::handshake::Prefixed;
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

/// Writes a response (JSON, then the body as one binary message) as a WebSocket client.
pub(crate) async fn write_response<W: AsyncWrite + Unpin>(w: &mut W, request_id: &str, response: &HttpResponse) -> Result<(), Error> {
    hc_ws::write_masked(w, OpCode::Text, response_json(request_id, response).as_bytes(), rand::random()).await?;
    if !response.body.is_empty() {
        hc_ws::write_masked(w, OpCode::Binary, &response.body, rand::random()).await?;
    }
    Ok(())
}

/// Whether a response must go through a rendezvous instead of the control channel.
pub fn needs_rendezvous(response: &HttpResponse) -> bool {
    response.body.len() > MAX_CONTROL_BODY_BYTES
}

/// Answers `request` through a rendezvous opened with its address (for large responses).
pub async fn respond_via_rendezvous(endpoint: &RelayEndpoint, request: &HttpRequest, response: &HttpResponse) -> Result<(), Error> {
    let ws = listener::accept(endpoint, &request.address).await?;
    let (_r, mut w) = tokio::io::split(ws.io);
    write_response(&mut w, &request.id, response).await?;
    let _ = hc_ws::write_masked(&mut w, OpCode::Close, &CloseFrame::new(1000, "").payload(), rand::random()).await;
    Ok(())
}

/// Reads one whole message (text or binary, any fragmentation), answering pings; `None` when
/// the socket closes.
async fn read_message<R: AsyncRead + Unpin>(
    reader: &mut FrameReader<R>,
    w: &mut WriteHalf<Prefixed>,
    limit: usize,
) -> Result<Option<(OpCode, Vec<u8>)>, Error> {
    let mut kind = None;
    let mut data = Vec::new();
    loop {
        let Some(h) = reader.header().await? else { return Ok(None) };
        let mut payload = Vec::new();
        while (payload.len() as u64) < h.payload_len {
            let range = reader.chunk(h.payload_len - payload.len() as u64).await?;
            payload.extend_from_slice(&reader.buf_mut()[range]);
            if data.len() + payload.len() > limit {
                return Err(Error::new(ErrorKind::Protocol, format!("message larger than {limit} bytes")));
            }
        }
        match h.opcode {
            OpCode::Ping => hc_ws::write_masked(w, OpCode::Pong, &payload, rand::random()).await?,
            OpCode::Pong => {}
            OpCode::Close => return Ok(None),
            op => {
                kind.get_or_insert(if op == OpCode::Continuation { OpCode::Binary } else { op });
                data.extend_from_slice(&payload);
                if h.fin {
                    return Ok(kind.map(|k| (k, data)));
                }
            }
        }
    }
}

/// Opens the rendezvous of an address-only `request` and answers every request that arrives
/// on it with `handler`, until the relay closes it.
pub async fn serve_rendezvous(
    endpoint: &RelayEndpoint,
    address: &str,
    mut handler: impl FnMut(HttpRequest) -> HttpResponse,
) -> Result<(), Error> {
    let ws = listener::accept(endpoint, address).await?;
    let (r, mut w): (ReadHalf<Prefixed>, WriteHalf<Prefixed>) = tokio::io::split(ws.io);
    let mut reader = FrameReader::new(r, Peer::Server, 64 * 1024);
    loop {
        let Some((kind, text)) = read_message(&mut reader, &mut w, MAX_BODY).await? else { break };
        if kind != OpCode::Text {
            continue; // not a command
        }
        let command =
            match ServiceCommand::parse(&String::from_utf8_lossy(&text)).map_err(|e| Error::new(ErrorKind::Protocol, e.to_string()))? {
                control::Incoming::Known(ServiceCommand::Request(r)) => r,
                other => return Err(Error::new(ErrorKind::Protocol, format!("expected a request on the rendezvous, got {other:?}"))),
            };
        let body = if command.body == Some(true) {
            match read_message(&mut reader, &mut w, MAX_BODY).await? {
                Some((_, b)) => b,
                None => break,
            }
        } else {
            Vec::new()
        };
        let request = HttpRequest::from_command(command, body);
        let id = request.id.clone();
        let response = handler(request);
        write_response(&mut w, &id, &response).await?;
    }
    let _ = w.shutdown().await;
    Ok(())
}
