//! A request rendezvous (`sb-hc-action=request`, PROTOCOL.md §8.1) as the relay uses it: send
//! the full `request` and stream its body, read the `response` head, stream the response
//! body. The listener is the WebSocket client; the relay's end is an `hc_ws` server endpoint,
//! whose Pongs are sent between the frames written here.

use std::time::Duration;

use axum::body::{Body, Bytes};
use futures_util::StreamExt as _;
use hc_protocol::control::{Incoming, ListenerCommand, ResponseCommand};
use hc_protocol::frame::{CloseFrame, OpCode, close_code};
use hc_protocol::limits::MAX_CONTROL_MESSAGE_BYTES;
use hc_ws::{Config, Item, Message, Reader, Role, Writer};
use hyper_util::rt::TokioIo;
use tokio::io::{ReadHalf, WriteHalf};
use tokio::sync::mpsc;

use crate::error::RelayError;
use crate::registry::HcKey;

type Io = TokioIo<hyper::upgrade::Upgraded>;

/// A request rendezvous socket.
pub(crate) struct RequestChannel {
    reader: Reader<ReadHalf<Io>>,
    writer: Writer<WriteHalf<Io>>,
    /// The hybrid connection it belongs to: a kept channel only carries this one's requests.
    pub hc: HcKey,
}

impl std::fmt::Debug for RequestChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestChannel")
            .field("hc", &self.hc)
            .finish_non_exhaustive()
    }
}

impl RequestChannel {
    /// The relay's end of an upgraded rendezvous; `buffer` is the streaming read buffer and
    /// `write_timeout` bounds each write to the listener.
    pub(crate) fn new(
        io: hyper::upgrade::Upgraded,
        hc: HcKey,
        buffer: usize,
        write_timeout: Duration,
    ) -> Self {
        let config = Config::new(Role::Server)
            .read_buffer(buffer)
            .max_message(MAX_CONTROL_MESSAGE_BYTES)
            .write_timeout(Some(write_timeout));
        let (reader, writer) = hc_ws::split(TokioIo::new(io), config);
        RequestChannel { reader, writer, hc }
    }

    /// Sends the full `request` and, when present, its body as one binary message in pieces;
    /// a body that pauses longer than `idle` ends it with 408.
    pub(crate) async fn send_request(
        &mut self,
        json: &str,
        body: Option<Body>,
        idle: Duration,
    ) -> Result<(), RelayError> {
        let fail = |e: std::io::Error| RelayError::Rejected {
            status: 502,
            description: format!("writing the request to the listener: {e}"),
        };
        self.writer.flush_control().await.map_err(fail)?;
        self.writer
            .send(OpCode::Text, json.as_bytes())
            .await
            .map_err(fail)?;
        let Some(body) = body else { return Ok(()) };
        let mut stream = body.into_data_stream();
        let mut opcode = OpCode::Binary;
        while let Some(chunk) = tokio::time::timeout(idle, stream.next())
            .await
            .map_err(|_| RelayError::RequestBodyTimeout)?
        {
            let chunk = chunk.map_err(|e| {
                RelayError::BadRequest(format!("reading the request body failed: {e}"))
            })?;
            if chunk.is_empty() {
                continue;
            }
            self.writer
                .send_fragment(false, opcode, &chunk)
                .await
                .map_err(fail)?;
            opcode = OpCode::Continuation;
            // Control frames may go between fragments (RFC 6455 §5.4).
            self.writer.flush_control().await.map_err(fail)?;
        }
        self.writer
            .send_fragment(true, opcode, &[])
            .await
            .map_err(fail)
    }

    /// Reads until the `response` command (stray binary messages skipped: Node sends an empty
    /// one after `body: false`).
    pub(crate) async fn read_response(&mut self) -> Result<ResponseCommand, String> {
        loop {
            match self
                .reader
                .next_message()
                .await
                .map_err(|e| e.to_string())?
            {
                Some(Message::Text(text)) => {
                    return match ListenerCommand::parse(&text) {
                        Ok(Incoming::Known(ListenerCommand::Response(r))) => Ok(r),
                        Ok(other) => Err(format!("expected a response, got {other:?}")),
                        Err(e) => Err(e.to_string()),
                    };
                }
                Some(Message::Ping) => self
                    .writer
                    .flush_control()
                    .await
                    .map_err(|e| e.to_string())?,
                Some(Message::Binary(_) | Message::Pong) => {}
                Some(Message::Close(_)) | None => {
                    return Err("the listener closed the rendezvous".into());
                }
            }
        }
    }

    /// Streams the body message's payload into `tx` until its last frame; `idle` bounds the
    /// wait for each piece. Returns false when the channel cannot be reused.
    pub(crate) async fn stream_body(
        &mut self,
        tx: &mpsc::Sender<Result<Bytes, std::io::Error>>,
        idle: Duration,
    ) -> bool {
        let broken = |why: &str| Err(std::io::Error::other(why.to_owned()));
        loop {
            let item = match tokio::time::timeout(idle, self.reader.next_item()).await {
                Ok(Ok(Some(item))) => item,
                Ok(Ok(None) | Err(_)) => {
                    let _ = tx
                        .send(broken("the listener closed the rendezvous during the body"))
                        .await;
                    return false;
                }
                Err(_) => {
                    let _ = tx
                        .send(broken("the listener's body was idle for too long"))
                        .await;
                    return false;
                }
            };
            match item {
                Item::Data(h) => {
                    let mut done = 0;
                    while done < h.payload_len {
                        let chunk =
                            match tokio::time::timeout(idle, self.reader.data_chunk(&h, &mut done))
                                .await
                            {
                                Ok(Ok(c)) => Bytes::copy_from_slice(c),
                                _ => {
                                    let _ = tx.send(broken("the listener's body stopped")).await;
                                    return false;
                                }
                            };
                        if tx.send(Ok(chunk)).await.is_err() {
                            return false;
                        }
                    }
                    if h.fin {
                        return true;
                    }
                }
                Item::Ping => {
                    if self.writer.flush_control().await.is_err() {
                        return false;
                    }
                }
                Item::Pong => {}
                Item::Close(_) => {
                    let _ = tx
                        .send(broken("the listener closed the rendezvous during the body"))
                        .await;
                    return false;
                }
            }
        }
    }

    /// Closes the rendezvous from the relay's side.
    pub(crate) async fn close(mut self) {
        let _ = self
            .writer
            .close(&CloseFrame::new(close_code::NORMAL, ""))
            .await;
        self.writer.shutdown().await;
    }
}
