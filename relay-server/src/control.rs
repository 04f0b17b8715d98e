//! One listener's control channel (PROTOCOL.md §5): the relay writes `accept` and `request`
//! commands, the listener writes `renewToken` and `response`, either side pings.
//!
//! Two futures share the channel: the inbound one reads messages and acts on them (it never
//! writes: the endpoint queues Pongs and the Close echo), the outbound one owns the writer
//! and sends commands, queued control frames and keep-alive pings, and watches the deadlines
//! of [`ListenerLife`]. Every write has a deadline (the keep-alive period), so a listener
//! that stops reading is dropped instead of holding its senders.
//!
//! The channel closes with 1008 when its token expired more than the grace period ago
//! without a valid renewal (§3.5, §15 MUST 3) or when a renewal is invalid; with 1001 when
//! its hybrid connection is deleted or the relay shuts down (§5.5); with 1002/1007/1009 on
//! protocol errors, text that is not UTF-8 or oversize messages. A Close from the listener is
//! echoed. When the channel ends, accepts and requests that were queued but never written
//! are failed at once, and so are the HTTP requests this listener was given and has not
//! answered, so their clients do not wait for a timeout.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hc_protocol::control::{ControlError, Incoming, ListenerCommand, ResponseCommand};
use hc_protocol::frame::{CloseFrame, OpCode, close_code};
use hc_protocol::limits::MAX_CONTROL_MESSAGE_BYTES;
use hc_protocol::{AuthError, Right};
use hc_ws::{Config, Message, ReadError, Reader, Role, Writer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::{sleep_until, timeout};
use tracing::{debug, info};

use crate::fault::ListenerFault;
use crate::lifecycle::{ListenerLife, PingDue};
use crate::registry::{
    ConnectionPermit, ControlOut, Delivery, HcKey, ListenerGuard, PendingHttp, RendezvousReply,
};
use crate::state::RelayState;
use crate::target::Target;

/// Write deadline when keep-alive pings are off.
const DEFAULT_WRITE_DEADLINE: Duration = Duration::from_secs(30);

/// Everything a control channel task owns.
#[derive(Debug)]
pub(crate) struct ControlChannel {
    /// Shared relay state.
    pub state: Arc<RelayState>,
    /// The hybrid connection.
    pub hc: HcKey,
    /// The listener's tracking id.
    pub tracking_id: String,
    /// Token expiry at open, Unix seconds.
    pub expires_at: u64,
    /// What the status page shows (the expiry moves on renewal).
    pub info: Arc<crate::registry::ListenerInfo>,
    /// Keeps the listener registered while the task runs.
    pub guard: ListenerGuard,
    /// The namespace quota slot.
    pub permit: ConnectionPermit,
    /// Commands from the relay.
    pub rx: mpsc::Receiver<ControlOut>,
}

/// What ended the channel, and what to send the listener.
#[derive(Debug)]
enum Exit {
    /// Send this Close, then close TCP.
    Close(u16, String),
    /// The listener closed: its Close was echoed (queued by the endpoint).
    Echo(CloseFrame),
    /// TCP is gone, broken or stuck: just drop it.
    Drop(String),
}

/// What the two futures share.
struct Shared<'a> {
    state: &'a RelayState,
    hc: &'a HcKey,
    tracking_id: &'a str,
    listener_id: u64,
    info: &'a crate::registry::ListenerInfo,
    life: Mutex<ListenerLife>,
    /// The expiry moved: the outbound future recomputes its deadline.
    changed: Notify,
}

impl Shared<'_> {
    fn life(&self) -> std::sync::MutexGuard<'_, ListenerLife> {
        self.life.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ControlChannel {
    /// Serves the channel until it closes.
    pub(crate) async fn run<IO: AsyncRead + AsyncWrite + Unpin + Send>(self, io: IO) {
        let ControlChannel {
            state,
            hc,
            tracking_id,
            expires_at,
            info,
            guard,
            permit,
            mut rx,
        } = self;
        let keepalive = state.options.listener_keepalive;
        let config = Config::new(Role::Server)
            .max_message(MAX_CONTROL_MESSAGE_BYTES)
            .write_timeout(Some(keepalive.unwrap_or(DEFAULT_WRITE_DEADLINE)))
            .echo_close();
        let (mut reader, mut writer) = hc_ws::split(io, config);
        let now = state.options.clock.instant_now();
        let shared = Shared {
            state: &state,
            hc: &hc,
            tracking_id: &tracking_id,
            listener_id: guard.id(),
            info: &info,
            life: Mutex::new(ListenerLife::new(
                expires_at,
                state.options.token_grace,
                keepalive,
                now,
            )),
            changed: Notify::new(),
        };
        let mid_write = AtomicBool::new(false);
        let mut awaiting_body = None;
        // A listener that joins while a lasting dropListeners fault covers it meets it now.
        if let Some(order) = state.faults.listener_joined(&hc) {
            info.order(order);
        }
        let (mut faults_in, mut faults_out) = (state.faults.subscribe(), state.faults.subscribe());
        let exit = tokio::select! {
            exit = shared.inbound(&mut reader, &mut awaiting_body, &mut faults_in) => exit,
            exit = shared.outbound(&mut writer, &mut rx, &mid_write, &mut faults_out) => exit,
        };
        drop(guard);
        state.telemetry.listener_left();
        let why = finish(exit, &mut writer, mid_write.load(Ordering::Acquire)).await;
        fail_undelivered(&state, &hc, &mut rx);
        fail_unanswered(&state, &hc, shared.listener_id, awaiting_body);
        drop(permit);
        info!(tracking_id = %tracking_id, namespace = %hc.0, hybrid_connection = %hc.1, %why, "listener disconnected");
    }
}

/// Sends what `exit` calls for (unless a write was cut in the middle of a frame), closes TCP,
/// and says why the channel ended.
async fn finish<W: AsyncWrite + Unpin>(
    exit: Exit,
    writer: &mut Writer<W>,
    mid_write: bool,
) -> String {
    let why = match &exit {
        Exit::Close(code, reason) => format!("closed by relay: {code} {reason}"),
        Exit::Echo(close) => format!("closed by listener: {:?} {}", close.code, close.reason),
        Exit::Drop(why) => why.clone(),
    };
    if !mid_write {
        let goodbye = async {
            match &exit {
                Exit::Close(code, reason) => writer.close(&CloseFrame::new(*code, reason)).await,
                Exit::Echo(_) => writer.flush_control().await,
                Exit::Drop(_) => Ok(()),
            }
        };
        let _ = timeout(Duration::from_secs(2), goodbye).await;
        writer.shutdown().await;
    }
    why
}

impl Shared<'_> {
    /// Reads the listener's messages until one ends the channel (nothing while stalled).
    async fn inbound<R: AsyncRead + Unpin>(
        &self,
        reader: &mut Reader<R>,
        awaiting: &mut Option<(ResponseCommand, PendingHttp)>,
        faults: &mut watch::Receiver<u64>,
    ) -> Exit {
        loop {
            if let Some(exit) = self.stall_gate(faults, false).await {
                return exit;
            }
            let message = reader.next_message().await;
            if let Ok(Some(m)) = &message {
                self.life().heard();
                tracing::trace!(tracking_id = %self.tracking_id, message = message_kind(m), "control message");
            }
            let exit = match message {
                Ok(Some(Message::Text(text))) => self.on_command(&text, awaiting),
                Ok(Some(Message::Binary(b))) => {
                    match awaiting.take() {
                        Some((response, pending)) => {
                            let _ = pending.reply.send(Delivery::Control(response, Some(b)));
                        }
                        // Node sends an empty binary message after a body:false response (§5.3).
                        None => {
                            debug!(tracking_id = %self.tracking_id, len = b.len(), "ignored binary message on control channel")
                        }
                    }
                    None
                }
                Ok(Some(Message::Ping | Message::Pong)) => None,
                Ok(Some(Message::Close(close))) => Some(Exit::Echo(close)),
                Ok(None) => Some(Exit::Drop(
                    "listener closed TCP without a close frame".into(),
                )),
                Err(e) => Some(read_error_exit(e)),
            };
            if let Some(exit) = exit {
                return exit;
            }
        }
    }

    /// Sends commands, queued control frames and pings; watches expiry, shutdown and what
    /// injected faults order (a drop, an expiry, a stall).
    async fn outbound<W: AsyncWrite + Unpin>(
        &self,
        writer: &mut Writer<W>,
        rx: &mut mpsc::Receiver<ControlOut>,
        mid_write: &AtomicBool,
        faults: &mut watch::Receiver<u64>,
    ) -> Exit {
        let clock = self.state.options.clock;
        let cancel = self.state.cancel.clone();
        loop {
            match self.info.take_order() {
                Some(ListenerFault::Drop(Some((code, reason)))) => {
                    return Exit::Close(code, format!("{reason} TrackingId:{}", self.tracking_id));
                }
                Some(ListenerFault::Drop(None)) => {
                    return Exit::Drop("dropped by an injected fault".into());
                }
                Some(ListenerFault::Expire) => {
                    let now = clock.unix_now();
                    debug!(tracking_id = %self.tracking_id, "token expired by an injected fault");
                    self.life().renewed(now);
                    self.info.expires_at.store(now, Ordering::Relaxed);
                }
                None => {}
            }
            if let Some(exit) = self.stall_gate(faults, true).await {
                return exit;
            }
            let (expiry, next_ping) = {
                let life = self.life();
                (
                    life.expiry_deadline(clock.unix_now(), clock.instant_now()),
                    life.next_ping(),
                )
            };
            let step = tokio::select! {
                _ = writer.control_ready() => guarded(mid_write, writer.flush_control()).await,
                out = rx.recv() => match out {
                    Some(ControlOut::Text(json)) | Some(ControlOut::Accept { json, .. }) => guarded(mid_write, writer.send(OpCode::Text, json.as_bytes())).await,
                    Some(ControlOut::Request { json, body, .. }) => guarded(mid_write, async {
                        writer.send(OpCode::Text, json.as_bytes()).await?;
                        match body {
                            Some(b) => writer.send(OpCode::Binary, &b).await,
                            None => Ok(()),
                        }
                    })
                    .await,
                    Some(ControlOut::Close(code, reason)) => return Exit::Close(code, reason),
                    None => return Exit::Close(close_code::INTERNAL_ERROR, "relay dropped the listener".into()),
                },
                _ = sleep_until(next_ping.unwrap_or_else(|| clock.instant_now())), if next_ping.is_some() => {
                    let due = self.life().ping_due(clock.instant_now());
                    match due {
                        PingDue::Ping => guarded(mid_write, writer.ping(b"relay")).await,
                        PingDue::GiveUp => return Exit::Drop("the listener did not answer two keep-alive pings".into()),
                    }
                }
                _ = sleep_until(expiry) => return Exit::Close(close_code::POLICY_VIOLATION, self.expired_reason()),
                _ = self.changed.notified() => Ok(()),
                changed = faults.changed() => {
                    if changed.is_err() {
                        // The relay is going away; shutdown ends the channel.
                        cancel.cancelled().await;
                    }
                    Ok(())
                }
                _ = cancel.cancelled() => return Exit::Close(close_code::GOING_AWAY, "The relay is shutting down.".into()),
            };
            if let Err(e) = step {
                return Exit::Drop(format!("write failed: {e}"));
            }
        }
    }

    /// Waits while a stallControl fault covers this channel (`count`: the outbound side,
    /// which counts the stall once); `Some` when the relay shuts down meanwhile.
    async fn stall_gate(&self, faults: &mut watch::Receiver<u64>, count: bool) -> Option<Exit> {
        if !self.state.faults.stalled(self.hc, count) {
            return None;
        }
        if count {
            info!(tracking_id = %self.tracking_id, "control channel stalled by an injected fault");
        }
        loop {
            tokio::select! {
                changed = faults.changed() => {
                    if changed.is_err() {
                        self.state.cancel.cancelled().await;
                    }
                }
                _ = self.state.cancel.cancelled() => {
                    return Some(Exit::Close(close_code::GOING_AWAY, "The relay is shutting down.".into()));
                }
            }
            if !self.state.faults.stalled(self.hc, false) {
                if count {
                    info!(tracking_id = %self.tracking_id, "control channel resumed");
                }
                return None;
            }
        }
    }

    fn expired_reason(&self) -> String {
        let text = AuthError::Expired(self.life().expires_at()).to_string();
        format!("{text} TrackingId:{}", self.tracking_id)
    }

    fn on_command(
        &self,
        text: &str,
        awaiting: &mut Option<(ResponseCommand, PendingHttp)>,
    ) -> Option<Exit> {
        match ListenerCommand::parse(text) {
            Ok(Incoming::Known(ListenerCommand::RenewToken(renew))) => self.renew(&renew.token),
            Ok(Incoming::Known(ListenerCommand::Response(r))) => {
                self.on_response(r, awaiting);
                None
            }
            Ok(Incoming::Unknown(name)) => {
                debug!(tracking_id = %self.tracking_id, command = %name, "ignored unknown control command");
                None
            }
            // A response that cannot be read fails its request at once (502); the channel
            // stays, since the listener's other requests are not affected.
            Err(ControlError::BadCommand {
                command,
                reason,
                request_id: Some(id),
            }) if command == "response" => {
                if let Some(pending) = self.take_own_request(&id) {
                    let _ = pending.reply.send(Delivery::Failed(format!(
                        "The listener sent an invalid response: {reason}"
                    )));
                }
                None
            }
            Err(e) => Some(Exit::Close(close_code::PROTOCOL_ERROR, e.to_string())),
        }
    }

    /// A `response` answers a request only if this listener was given that request; anything
    /// else is ignored and the request stays where it is.
    fn on_response(
        &self,
        r: ResponseCommand,
        awaiting: &mut Option<(ResponseCommand, PendingHttp)>,
    ) {
        if let Some((response, pending)) = awaiting.take() {
            let _ = pending.reply.send(Delivery::Control(response, None));
        }
        match self.take_own_request(&r.request_id) {
            Some(pending) if r.body => *awaiting = Some((r, pending)),
            Some(pending) => {
                let _ = pending.reply.send(Delivery::Control(r, None));
            }
            None => {
                debug!(tracking_id = %self.tracking_id, request_id = %r.request_id, "response without a pending request of this listener ignored")
            }
        }
    }

    fn take_own_request(&self, id: &str) -> Option<PendingHttp> {
        let me = self.listener_id;
        self.state
            .registry
            .take_http_if(self.hc, id, |p| p.listener == me)
    }

    /// `renewToken`: a valid Listen token moves the expiry; anything else closes with 1008,
    /// and so does every renewal while an expireTokens fault covers the channel.
    fn renew(&self, token: &str) -> Option<Exit> {
        let now = self.state.options.clock.unix_now();
        if self.state.faults.renewal_refused(self.hc) {
            return Some(Exit::Close(
                close_code::POLICY_VIOLATION,
                format!(
                    "{} (injected fault) TrackingId:{}",
                    AuthError::Expired(now),
                    self.tracking_id
                ),
            ));
        }
        let result = Target::lookup(&self.state.store.read(), self.hc)
            .map_err(|e| e.to_string())
            .and_then(|t| {
                t.authorize(Some(token), Right::Listen, now)
                    .map_err(|e| e.to_string())
            });
        match result {
            Ok(auth) => {
                debug!(tracking_id = %self.tracking_id, expires_at = auth.expires_at, "token renewed");
                self.life().renewed(auth.expires_at);
                self.info
                    .expires_at
                    .store(auth.expires_at, Ordering::Relaxed);
                self.changed.notify_one();
                None
            }
            Err(why) => Some(Exit::Close(
                close_code::POLICY_VIOLATION,
                format!("{why} TrackingId:{}", self.tracking_id),
            )),
        }
    }
}

/// Runs a write, marking it as in progress (a write cut in the middle leaves a partial frame
/// on the wire, after which no Close may be written).
async fn guarded<F: Future<Output = std::io::Result<()>>>(
    mid_write: &AtomicBool,
    write: F,
) -> std::io::Result<()> {
    mid_write.store(true, Ordering::Release);
    let result = write.await;
    mid_write.store(false, Ordering::Release);
    result
}

fn read_error_exit(e: ReadError) -> Exit {
    match e {
        ReadError::TooLarge(max) => Exit::Close(
            close_code::MESSAGE_TOO_BIG,
            format!("control message larger than {max} bytes"),
        ),
        ReadError::InvalidUtf8 => Exit::Close(
            close_code::INVALID_PAYLOAD,
            ReadError::InvalidUtf8.to_string(),
        ),
        e @ (ReadError::Io(_) | ReadError::UnexpectedEof) => Exit::Drop(e.to_string()),
        e => Exit::Close(close_code::PROTOCOL_ERROR, e.to_string()),
    }
}

fn message_kind(m: &Message) -> &'static str {
    match m {
        Message::Text(_) => "text",
        Message::Binary(_) => "binary",
        Message::Ping => "ping",
        Message::Pong => "pong",
        Message::Close(_) => "close",
    }
}

/// Accepts and requests still queued were never seen by the listener: tell them now.
fn fail_undelivered(state: &RelayState, hc: &HcKey, rx: &mut mpsc::Receiver<ControlOut>) {
    rx.close();
    while let Ok(out) = rx.try_recv() {
        match out {
            ControlOut::Accept { id, .. } => {
                if let Some(p) = state.registry.take_pending(hc, &id) {
                    let description =
                        "The listener disconnected before it was offered the connection."
                            .to_owned();
                    let _ = p.send(RendezvousReply::Rejected {
                        status: 502,
                        description,
                    });
                }
            }
            ControlOut::Request { id, .. } => {
                if let Some(p) = state.registry.take_http_if(hc, &id, |_| true) {
                    let _ = p.reply.send(Delivery::Failed(
                        "The listener disconnected before it was sent the request.".into(),
                    ));
                }
            }
            _ => {}
        }
    }
}

/// Requests this listener was given but has not answered (or opened a rendezvous for) get
/// 502 now instead of waiting for the HTTP timeout.
fn fail_unanswered(
    state: &RelayState,
    hc: &HcKey,
    listener: u64,
    awaiting: Option<(ResponseCommand, PendingHttp)>,
) {
    let why = "The listener disconnected before it answered the request.";
    if let Some((_, pending)) = awaiting {
        let _ = pending.reply.send(Delivery::Failed(format!(
            "{why} (the response body never came)"
        )));
    }
    for pending in state.registry.take_http_all(hc, |p| p.listener == listener) {
        let _ = pending.reply.send(Delivery::Failed(why.into()));
    }
}
