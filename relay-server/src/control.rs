//! One listener's control channel (PROTOCOL.md §5): the relay writes `accept` commands,
//! the listener writes `renewToken` (and, later, `response`), either side pings.
//!
//! The channel closes with 1008 when its token expired more than the grace period ago
//! without a valid renewal (§3.5, §15 MUST 3) or when a renewal is invalid; with 1001 when
//! its hybrid connection is deleted or the relay shuts down (§5.5); with 1002/1009 on
//! protocol errors or oversize messages. A Close from the listener is echoed. Accepts that
//! were queued but never written when the channel ends are failed at once, so their senders
//! do not wait for the rendezvous timeout.

use std::sync::Arc;
use std::time::Duration;

use hc_protocol::control::{Incoming, ListenerCommand, ResponseCommand};
use hc_protocol::frame::{CloseFrame, OpCode, close_code};
use hc_protocol::limits::MAX_CONTROL_MESSAGE_BYTES;
use hc_protocol::{AuthError, Right};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until, timeout};
use tracing::{debug, info};

use crate::RelayState;
use crate::http::{Delivery, PendingHttp};
use crate::registry::{ConnectionPermit, ControlOut, HcKey, ListenerGuard, RendezvousReply};
use crate::target::Target;
use crate::ws::{self, Message, MessageReader, ReadError};

/// Everything a control channel task owns.
#[derive(Debug)]
pub struct ControlChannel {
    /// Shared relay state.
    pub state: Arc<RelayState>,
    /// The hybrid connection.
    pub hc: HcKey,
    /// The listener's tracking id.
    pub tracking_id: String,
    /// Current token expiry, Unix seconds.
    pub expires_at: u64,
    /// Keeps the listener registered while the task runs.
    pub guard: ListenerGuard,
    /// The namespace quota slot.
    pub permit: ConnectionPermit,
    /// Commands from the relay.
    pub rx: mpsc::Receiver<ControlOut>,
    /// A `response` with `body: true` whose body message comes next.
    pub awaiting_body: Option<(ResponseCommand, PendingHttp)>,
}

/// What ended the loop, and what to send the listener.
enum Exit {
    /// Send this Close, then close TCP.
    Close(u16, String),
    /// The listener closed: echo its code.
    Echo(CloseFrame),
    /// TCP is gone or broken: just drop it.
    Drop(String),
}

impl ControlChannel {
    /// Serves the channel until it closes.
    pub async fn run<IO: AsyncRead + AsyncWrite + Send + 'static>(mut self, io: IO) {
        let (r, mut w) = tokio::io::split(io);
        let mut reader = MessageReader::new(r, ws::Peer::Client, MAX_CONTROL_MESSAGE_BYTES);
        let exit = self.serve(&mut reader, &mut w).await;
        drop(self.guard);
        let why = match exit {
            Exit::Close(code, reason) => {
                let _ = timeout(Duration::from_secs(2), ws::write_close(&mut w, &CloseFrame::new(code, &reason))).await;
                format!("closed by relay: {code} {reason}")
            }
            Exit::Echo(close) => {
                let _ = timeout(Duration::from_secs(2), ws::write_close(&mut w, &close)).await;
                format!("closed by listener: {:?} {}", close.code, close.reason)
            }
            Exit::Drop(why) => why,
        };
        let _ = timeout(Duration::from_secs(1), w.shutdown()).await;
        fail_undelivered(&self.state, &mut self.rx);
        drop(self.permit);
        info!(tracking_id = %self.tracking_id, namespace = %self.hc.0, hybrid_connection = %self.hc.1, %why, "listener disconnected");
    }

    fn deadline(&self) -> Instant {
        let now = crate::now_unix();
        let left = Duration::from_secs(self.expires_at.saturating_sub(now));
        Instant::now() + left + self.state.options.token_grace
    }

    async fn serve<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(&mut self, reader: &mut MessageReader<R>, w: &mut W) -> Exit {
        let cancel = self.state.cancel.clone();
        let keepalive = self.state.options.listener_keepalive;
        let mut unanswered = 0u32;
        let mut ping_at = Instant::now() + keepalive.unwrap_or_default();
        loop {
            let deadline = self.deadline();
            let step = tokio::select! {
                m = reader.next() => {
                    unanswered = 0;
                    self.on_message(m, w).await
                }
                _ = sleep_until(ping_at), if keepalive.is_some() => {
                    ping_at = Instant::now() + keepalive.unwrap_or_default();
                    if unanswered >= 2 {
                        Some(Exit::Drop("the listener did not answer two keep-alive pings".into()))
                    } else {
                        unanswered += 1;
                        write(w, OpCode::Ping, b"relay").await
                    }
                }
                out = self.rx.recv() => match out {
                    Some(ControlOut::Text(json)) | Some(ControlOut::Accept { json, .. }) => write(w, OpCode::Text, json.as_bytes()).await,
                    Some(ControlOut::Request { json, body, .. }) => match write(w, OpCode::Text, json.as_bytes()).await {
                        None => match body {
                            Some(b) => write(w, OpCode::Binary, &b).await,
                            None => None,
                        },
                        exit => exit,
                    },
                    Some(ControlOut::Close(code, reason)) => Some(Exit::Close(code, reason)),
                    None => Some(Exit::Close(close_code::INTERNAL_ERROR, "relay dropped the listener".into())),
                },
                _ = sleep_until(deadline) => Some(Exit::Close(close_code::POLICY_VIOLATION, self.expired_reason())),
                _ = cancel.cancelled() => Some(Exit::Close(close_code::GOING_AWAY, "The relay is shutting down.".into())),
            };
            if let Some(exit) = step {
                return exit;
            }
        }
    }

    fn expired_reason(&self) -> String {
        let text = AuthError::Expired(self.expires_at).to_string();
        format!("{text} TrackingId:{}", self.tracking_id)
    }

    async fn on_message<W: AsyncWrite + Unpin>(&mut self, m: Result<Option<Message>, ReadError>, w: &mut W) -> Option<Exit> {
        if let Ok(Some(message)) = &m {
            let (kind, len) = match message {
                Message::Text(t) => ("text", t.len()),
                Message::Binary(b) => ("binary", b.len()),
                Message::Ping(p) => ("ping", p.len()),
                Message::Pong => ("pong", 0),
                Message::Close(_) => ("close", 0),
            };
            tracing::trace!(tracking_id = %self.tracking_id, kind, len, "control message");
        }
        match m {
            Ok(Some(Message::Text(text))) => self.on_command(&text),
            Ok(Some(Message::Binary(b))) => {
                match self.awaiting_body.take() {
                    Some((response, pending)) => {
                        let _ = pending.reply.send(Delivery::Control(response, Some(b)));
                    }
                    // Node sends an empty binary message after a body:false response (§5.3).
                    None => debug!(tracking_id = %self.tracking_id, len = b.len(), "ignored binary message on control channel"),
                }
                None
            }
            Ok(Some(Message::Ping(payload))) => write(w, OpCode::Pong, &payload).await,
            Ok(Some(Message::Pong)) => None,
            Ok(Some(Message::Close(close))) => Some(Exit::Echo(close)),
            Ok(None) => Some(Exit::Drop("listener closed TCP without a close frame".into())),
            Err(ReadError::TooLarge(max)) => {
                Some(Exit::Close(close_code::MESSAGE_TOO_BIG, format!("control message larger than {max} bytes")))
            }
            Err(e @ (ReadError::Io(_) | ReadError::UnexpectedEof)) => Some(Exit::Drop(e.to_string())),
            Err(e) => Some(Exit::Close(close_code::PROTOCOL_ERROR, e.to_string())),
        }
    }

    fn on_command(&mut self, text: &str) -> Option<Exit> {
        match ListenerCommand::parse(text) {
            Ok(Incoming::Known(ListenerCommand::RenewToken(renew))) => self.renew(&renew.token),
            Ok(Incoming::Known(ListenerCommand::Response(r))) => {
                if let Some((response, pending)) = self.awaiting_body.take() {
                    let _ = pending.reply.send(Delivery::Control(response, None));
                }
                match self.state.registry.take_http(&r.request_id) {
                    Some(pending) if r.body => self.awaiting_body = Some((r, pending)),
                    Some(pending) => {
                        let _ = pending.reply.send(Delivery::Control(r, None));
                    }
                    None => {
                        debug!(tracking_id = %self.tracking_id, request_id = %r.request_id, "response without a pending HTTP request ignored")
                    }
                }
                None
            }
            Ok(Incoming::Unknown(name)) => {
                debug!(tracking_id = %self.tracking_id, command = %name, "ignored unknown control command");
                None
            }
            Err(e) => Some(Exit::Close(close_code::PROTOCOL_ERROR, e.to_string())),
        }
    }

    /// `renewToken`: a valid Listen token moves the expiry; anything else closes with 1008.
    fn renew(&mut self, token: &str) -> Option<Exit> {
        let now = crate::now_unix();
        let result = Target::lookup(&self.state.store.read(), &self.hc)
            .map_err(|e| e.to_string())
            .and_then(|t| t.authorize(Some(token), Right::Listen, now).map_err(|e| e.to_string()));
        match result {
            Ok(auth) => {
                debug!(tracking_id = %self.tracking_id, expires_at = auth.expires_at, "token renewed");
                self.expires_at = auth.expires_at;
                None
            }
            Err(why) => Some(Exit::Close(close_code::POLICY_VIOLATION, format!("{why} TrackingId:{}", self.tracking_id))),
        }
    }
}

async fn write<W: AsyncWrite + Unpin>(w: &mut W, op: OpCode, payload: &[u8]) -> Option<Exit> {
    ws::write_frame(w, op, payload).await.err().map(|e| Exit::Drop(format!("write failed: {e}")))
}

/// Accepts still queued were never seen by the listener: tell their senders now.
fn fail_undelivered(state: &RelayState, rx: &mut mpsc::Receiver<ControlOut>) {
    rx.close();
    while let Ok(out) = rx.try_recv() {
        match out {
            ControlOut::Accept { id, .. } => {
                if let Some(p) = state.registry.take_pending(&id) {
                    let description = "The listener disconnected before it was offered the connection.".to_owned();
                    let _ = p.reply.send(RendezvousReply::Rejected { status: 502, description });
                }
            }
            ControlOut::Request { id, .. } => {
                if let Some(p) = state.registry.take_http(&id) {
                    let _ = p.reply.send(Delivery::Failed("The listener disconnected before it was sent the request.".into()));
                }
            }
            _ => {}
        }
    }
}
