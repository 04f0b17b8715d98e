//! One listener's control channel (PROTOCOL.md §5): the relay writes `accept` and `request`
//! commands, the listener writes `renewToken` and `response`, either side pings.
//!
//! The channel closes with 1008 when its token expired more than the grace period ago
//! without a valid renewal (§3.5, §15 MUST 3) or when a renewal is invalid; with 1001 when
//! its hybrid connection is deleted or the relay shuts down (§5.5); with 1002/1007/1009 on
//! protocol errors, text that is not UTF-8 or oversize messages. A Close from the listener is
//! echoed.
//!
//! A listener that stops reading is dropped: every write must complete within the write
//! deadline (the keep-alive period), otherwise the channel ends without waiting for the
//! socket. When the channel ends, accepts and requests that were queued but never written
//! are failed at once, and so are the HTTP requests this listener was given and has not
//! answered, so their clients do not wait for a timeout.

use std::sync::Arc;
use std::time::Duration;

use hc_protocol::control::{ControlError, Incoming, ListenerCommand, ResponseCommand};
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

/// Write deadline when keep-alive pings are off.
const DEFAULT_WRITE_DEADLINE: Duration = Duration::from_secs(30);
/// Token expiries further away than this are treated as this far (a signed `se` may be any
/// 64-bit number; deadlines must stay representable).
pub const MAX_EXPIRY_HORIZON: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The instant `secs` seconds after now, clamped to [`MAX_EXPIRY_HORIZON`].
pub fn instant_in(secs: u64) -> Instant {
    let wait = Duration::from_secs(secs).min(MAX_EXPIRY_HORIZON);
    Instant::now() + wait
}

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
    /// TCP is gone, broken or stuck: just drop it.
    Drop(String),
}

impl ControlChannel {
    /// Serves the channel until it closes.
    pub async fn run<IO: AsyncRead + AsyncWrite + Send + 'static>(mut self, io: IO) {
        let (r, mut w) = tokio::io::split(io);
        let mut reader = MessageReader::new(r, ws::Peer::Client, MAX_CONTROL_MESSAGE_BYTES);
        let exit = self.serve(&mut reader, &mut w).await;
        let listener_id = self.guard.id();
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
        fail_undelivered(&self.state, &self.hc, &mut self.rx);
        fail_unanswered(&self.state, &self.hc, listener_id, self.awaiting_body.take());
        drop(self.permit);
        info!(tracking_id = %self.tracking_id, namespace = %self.hc.0, hybrid_connection = %self.hc.1, %why, "listener disconnected");
    }

    fn deadline(&self) -> Instant {
        instant_in(self.expires_at.saturating_sub(crate::now_unix())) + self.state.options.token_grace
    }

    /// How long one write may take before the listener counts as stuck.
    fn write_deadline(&self) -> Duration {
        self.state.options.listener_keepalive.unwrap_or(DEFAULT_WRITE_DEADLINE)
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
                        self.write(w, OpCode::Ping, b"relay").await
                    }
                }
                out = self.rx.recv() => match out {
                    Some(ControlOut::Text(json)) | Some(ControlOut::Accept { json, .. }) => self.write(w, OpCode::Text, json.as_bytes()).await,
                    Some(ControlOut::Request { json, body, .. }) => match self.write(w, OpCode::Text, json.as_bytes()).await {
                        None => match body {
                            Some(b) => self.write(w, OpCode::Binary, &b).await,
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

    /// Writes one frame, bounded by the write deadline and by shutdown.
    async fn write<W: AsyncWrite + Unpin>(&self, w: &mut W, op: OpCode, payload: &[u8]) -> Option<Exit> {
        let limit = self.write_deadline();
        tokio::select! {
            r = timeout(limit, ws::write_frame(w, op, payload)) => match r {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(Exit::Drop(format!("write failed: {e}"))),
                Err(_) => Some(Exit::Drop(format!("the listener did not take a write within {} s", limit.as_secs_f32()))),
            },
            _ = self.state.cancel.cancelled() => Some(Exit::Drop("the relay stopped during a write".into())),
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
            Ok(Some(Message::Ping(payload))) => self.write(w, OpCode::Pong, &payload).await,
            Ok(Some(Message::Pong)) => None,
            Ok(Some(Message::Close(close))) => Some(Exit::Echo(close)),
            Ok(None) => Some(Exit::Drop("listener closed TCP without a close frame".into())),
            Err(ReadError::TooLarge(max)) => {
                Some(Exit::Close(close_code::MESSAGE_TOO_BIG, format!("control message larger than {max} bytes")))
            }
            Err(ReadError::InvalidUtf8) => Some(Exit::Close(close_code::INVALID_PAYLOAD, ReadError::InvalidUtf8.to_string())),
            Err(e @ (ReadError::Io(_) | ReadError::UnexpectedEof)) => Some(Exit::Drop(e.to_string())),
            Err(e) => Some(Exit::Close(close_code::PROTOCOL_ERROR, e.to_string())),
        }
    }

    fn on_command(&mut self, text: &str) -> Option<Exit> {
        match ListenerCommand::parse(text) {
            Ok(Incoming::Known(ListenerCommand::RenewToken(renew))) => self.renew(&renew.token),
            Ok(Incoming::Known(ListenerCommand::Response(r))) => {
                self.on_response(r);
                None
            }
            Ok(Incoming::Unknown(name)) => {
                debug!(tracking_id = %self.tracking_id, command = %name, "ignored unknown control command");
                None
            }
            // A response that cannot be read fails its request at once (502); the channel
            // stays, since the listener's other requests are not affected.
            Err(ControlError::BadCommand { command, reason, request_id: Some(id) }) if command == "response" => {
                if let Some(pending) = self.take_own_request(&id) {
                    let _ = pending.reply.send(Delivery::Failed(format!("The listener sent an invalid response: {reason}")));
                }
                None
            }
            Err(e) => Some(Exit::Close(close_code::PROTOCOL_ERROR, e.to_string())),
        }
    }

    /// A `response` on the control channel answers a request only if this listener was given
    /// that request; anything else is ignored and the request stays where it is.
    fn on_response(&mut self, r: ResponseCommand) {
        if let Some((response, pending)) = self.awaiting_body.take() {
            let _ = pending.reply.send(Delivery::Control(response, None));
        }
        match self.take_own_request(&r.request_id) {
            Some(pending) if r.body => self.awaiting_body = Some((r, pending)),
            Some(pending) => {
                let _ = pending.reply.send(Delivery::Control(r, None));
            }
            None => {
                debug!(tracking_id = %self.tracking_id, request_id = %r.request_id, "response without a pending request of this listener ignored")
            }
        }
    }

    fn take_own_request(&self, id: &str) -> Option<PendingHttp> {
        let me = self.guard.id();
        self.state.registry.take_http_if(&self.hc, id, |p| p.listener == me)
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

/// Accepts and requests still queued were never seen by the listener: tell them now.
fn fail_undelivered(state: &RelayState, hc: &HcKey, rx: &mut mpsc::Receiver<ControlOut>) {
    rx.close();
    while let Ok(out) = rx.try_recv() {
        match out {
            ControlOut::Accept { id, .. } => {
                if let Some(p) = state.registry.take_pending(hc, &id) {
                    let description = "The listener disconnected before it was offered the connection.".to_owned();
                    let _ = p.send(RendezvousReply::Rejected { status: 502, description });
                }
            }
            ControlOut::Request { id, .. } => {
                if let Some(p) = state.registry.take_http_if(hc, &id, |_| true) {
                    let _ = p.reply.send(Delivery::Failed("The listener disconnected before it was sent the request.".into()));
                }
            }
            _ => {}
        }
    }
}

/// Requests this listener was given but has not answered (or opened a rendezvous for) get
/// 502 now instead of waiting for the HTTP timeout.
fn fail_unanswered(state: &RelayState, hc: &HcKey, listener: u64, awaiting: Option<(ResponseCommand, PendingHttp)>) {
    let why = "The listener disconnected before it answered the request.";
    if let Some((_, pending)) = awaiting {
        let _ = pending.reply.send(Delivery::Failed(format!("{why} (the response body never came)")));
    }
    for pending in state.registry.take_http_all(hc, |p| p.listener == listener) {
        let _ = pending.reply.send(Delivery::Failed(why.into()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn far_expiries_are_clamped() {
        let now = Instant::now();
        let far = instant_in(u64::MAX);
        assert!(far >= now + MAX_EXPIRY_HORIZON && far <= Instant::now() + MAX_EXPIRY_HORIZON);
        let _ = far + Duration::from_secs(u32::MAX as u64);
    }
}
