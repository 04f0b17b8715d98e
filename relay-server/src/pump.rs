//! The data phase of a relayed WebSocket (PROTOCOL.md §6.4): frames are copied between the
//! sender's and the listener's sockets as they arrive, unmasked on the way (both peers are
//! clients of the relay), with opcode and FIN kept so message boundaries survive. Nothing is
//! buffered beyond one read buffer per direction, so a slow reader slows its writer.
//!
//! Each direction is one future that owns its source's reader and its destination's writer,
//! so no lock is shared between them and a slow frame in one direction never holds up the
//! other. Per hop: a Ping queues its Pong on the pinging side's own endpoint, which the other
//! direction (the one that writes to that side) sends between frames; Pongs are dropped. A
//! Close from one side is forwarded with its code and reason, and the other direction keeps
//! flowing until that side closes too (half-close). A side that drops TCP without a Close
//! makes the relay drop the other side's TCP as well: an abort stays an abort. A side that
//! breaks the framing rules (bad header, no mask, a continuation out of sequence) gets Close
//! 1002 and the other side is dropped.

use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use hc_protocol::frame::{CloseFrame, FrameHeader, OpCode, close_code};
use hc_ws::{Config, ControlHandle, ForwardError, Item, ReadError, Reader, Role, Writer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, Sleep, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::fault::{Cut, TunnelFaults};

/// Pieces a shaped direction may hold (each at most one read buffer): the delay line's bound.
const SHAPE_QUEUE: usize = 32;
/// The reason of the Close a cut tunnel's sides get.
const CUT_REASON: &str = "The relay cut the tunnel (injected fault).";

/// How one direction ended.
#[derive(Debug)]
enum End {
    /// The source sent Close, which was forwarded.
    Closed,
    /// The source broke the framing rules: it gets Close 1002, the other side is dropped.
    Violation(String),
    /// The source vanished, or the destination failed, or shutdown ran out of time.
    Aborted(String),
    /// An injected fault cut the tunnel.
    Cut(Cut),
}

/// How a tunnel ended, with the payload bytes moved each way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TunnelReport {
    /// Payload bytes from sender to listener.
    pub sender_to_listener: u64,
    /// Payload bytes from listener to sender.
    pub listener_to_sender: u64,
    /// `None` for a clean close on both sides, else why it was aborted.
    pub aborted: Option<String>,
}

/// Settings of the data phase.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PumpOptions {
    /// Read buffer per direction (allocated only while data flows).
    pub buffer_size: usize,
    /// How long a tunnel may take to close after the relay starts shutting down.
    pub shutdown_grace: Duration,
}

/// How a tunnel learns what injected faults ask of it: a receiver that wakes when faults
/// change, and what applies now (`true`: the tunnel is just opening).
pub(crate) struct FaultFeed<'a> {
    /// Wakes when faults change.
    pub changed: watch::Receiver<u64>,
    /// What applies to this tunnel now.
    pub current: &'a (dyn Fn(bool) -> TunnelFaults + Send + Sync),
}

/// What faults ask of one tunnel, shared by its two directions. The cells are made the
/// first time a fault applies to the tunnel, so a tunnel no fault touches carries only an
/// empty slot for them.
#[derive(Debug)]
struct Plan<'a> {
    cells: std::sync::OnceLock<Box<PlanCells>>,
    /// The tunnel's byte counters, and what they held when it started.
    counters: [&'a AtomicU64; 2],
    start: u64,
}

/// A faulted tunnel's plan.
#[derive(Debug, Default)]
struct PlanCells {
    /// Cut once this many payload bytes passed both ways (`u64::MAX`: never).
    cut_after: AtomicU64,
    /// How ([`Cut::encode`]).
    cut_how: AtomicU32,
    /// Shaping is on.
    shaped: AtomicBool,
    /// Microseconds added to each direction.
    latency_us: AtomicU64,
    /// Bytes per second, [sender→listener, listener→sender]; 0 for no cap.
    rate: [AtomicU64; 2],
    /// What counted faults gave the tunnel when it opened (kept until faults are cleared).
    at_open: TunnelFaults,
}

impl<'a> Plan<'a> {
    fn new(counters: [&'a AtomicU64; 2]) -> Self {
        Plan {
            cells: std::sync::OnceLock::new(),
            start: counters[0].load(Ordering::Relaxed) + counters[1].load(Ordering::Relaxed),
            counters,
        }
    }

    /// What applies as the tunnel opens.
    fn open(&self, t: &TunnelFaults) {
        if *t != TunnelFaults::default() {
            let cells = self.cells.get_or_init(|| {
                Box::new(PlanCells {
                    at_open: *t,
                    ..PlanCells::default()
                })
            });
            cells.set(t);
        }
    }

    /// What applies after faults changed (plus what counted faults gave it at open).
    fn update(&self, t: &TunnelFaults) {
        match self.cells.get() {
            Some(cells) => cells.set(&t.keeping(&cells.at_open)),
            None if t.cut_after.is_some() || t.shape.is_some() => {
                self.cells.get_or_init(Default::default).set(t);
            }
            None => {}
        }
    }

    fn shaped(&self) -> bool {
        self.cells
            .get()
            .is_some_and(|c| c.shaped.load(Ordering::Acquire))
    }

    fn latency(&self) -> Duration {
        self.cells.get().map_or(Duration::ZERO, |c| {
            Duration::from_micros(c.latency_us.load(Ordering::Relaxed))
        })
    }

    fn rate(&self, index: usize) -> u64 {
        self.cells
            .get()
            .map_or(0, |c| c.rate[index].load(Ordering::Relaxed))
    }

    /// The cut due once the tunnel carried its `afterBytes`.
    fn over_limit(&self) -> Option<End> {
        let cells = self.cells.get()?;
        let limit = cells.cut_after.load(Ordering::Acquire);
        if limit == u64::MAX {
            return None;
        }
        let total = self.counters[0].load(Ordering::Relaxed)
            + self.counters[1].load(Ordering::Relaxed)
            - self.start;
        (total >= limit)
            .then(|| Cut::decode(cells.cut_how.load(Ordering::Relaxed)).map(End::Cut))
            .flatten()
    }
}

impl PlanCells {
    fn set(&self, t: &TunnelFaults) {
        let (after, how) = t.cut_after.map_or((u64::MAX, 0), |(n, c)| (n, c.encode()));
        self.cut_how.store(how, Ordering::Relaxed);
        self.cut_after.store(after, Ordering::Release);
        let shape = t.shape.unwrap_or_default();
        self.latency_us
            .store(shape.latency.as_micros() as u64, Ordering::Relaxed);
        for (cell, rate) in self.rate.iter().zip(shape.rate) {
            cell.store(rate.unwrap_or(0), Ordering::Relaxed);
        }
        self.shaped.store(t.shape.is_some(), Ordering::Release);
    }
}

/// One direction's view: where it reads, where it writes, what it counts.
struct Direction<'a, R, W> {
    src: &'a mut Reader<R>,
    dst: &'a mut Writer<W>,
    bytes: &'a AtomicU64,
    /// Set while a frame is half written to `dst` (a Close written then would corrupt it).
    mid_frame: &'a AtomicBool,
    /// What faults ask.
    plan: &'a Plan<'a>,
    /// 0 from the sender to the listener, 1 back.
    index: usize,
}

/// A shaped direction's queued item.
enum Piece {
    /// A frame (or a piece of one) and when it arrived.
    Data {
        fin: bool,
        opcode: OpCode,
        payload: Vec<u8>,
        arrived: Instant,
    },
    /// The source's Close, and when it arrived.
    Close(CloseFrame, Instant),
    /// The source ended otherwise.
    End(End),
    /// Shaping was turned off: back to forwarding directly.
    Unshaped,
}

/// Relays frames between `sender` and `listener` until both have closed or one aborts.
pub(crate) async fn bridge<S, L>(
    sender: S,
    listener: L,
    options: PumpOptions,
    cancel: CancellationToken,
    counters: [&AtomicU64; 2],
    mut faults: FaultFeed<'_>,
) -> TunnelReport
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    L: AsyncRead + AsyncWrite + Unpin + Send,
{
    let config = Config::new(Role::Server).read_buffer(options.buffer_size);
    let (mut sr, mut sw) = hc_ws::split(sender, config);
    let (mut lr, mut lw) = hc_ws::split(listener, config);
    let [up, down] = counters;
    let (start_up, start_down) = (up.load(Ordering::Relaxed), down.load(Ordering::Relaxed));
    let (to_listener_mid, to_sender_mid) = (AtomicBool::new(false), AtomicBool::new(false));
    let handles = [sw.control_handle(), lw.control_handle()];
    let plan = Plan::new(counters);
    let cut_now = {
        let at_open = (faults.current)(true);
        plan.open(&at_open);
        at_open.cut_now
    };
    // Pinned where they are made: passed by value and pinned inside `both`, each future would
    // be stored twice in the task (once as the argument, once pinned).
    let outcome = match cut_now {
        Some(cut) => Err((End::Cut(cut), true)),
        None => {
            let a = pin!(
                Direction {
                    src: &mut sr,
                    dst: &mut lw,
                    bytes: up,
                    mid_frame: &to_listener_mid,
                    plan: &plan,
                    index: 0,
                }
                .run()
            );
            let b = pin!(
                Direction {
                    src: &mut lr,
                    dst: &mut sw,
                    bytes: down,
                    mid_frame: &to_sender_mid,
                    plan: &plan,
                    index: 1,
                }
                .run()
            );
            let ends = Ends {
                handles: &handles,
                grace: options.shutdown_grace,
                cancel: &cancel,
                plan: &plan,
            };
            ends.both(a, b, &mut faults).await
        }
    };
    let aborted = match outcome {
        Ok(()) => {
            sw.shutdown().await;
            lw.shutdown().await;
            None
        }
        Err((End::Violation(why), from_sender)) => {
            let close = CloseFrame::new(close_code::PROTOCOL_ERROR, &why);
            if from_sender {
                refuse(&mut sw, &to_sender_mid, &close).await;
            } else {
                refuse(&mut lw, &to_listener_mid, &close).await;
            }
            Some(why)
        }
        Err((End::Aborted(why), _)) => Some(why),
        Err((End::Closed, _)) => None,
        Err((End::Cut(cut), _)) => {
            // A reset just drops both sockets; a close tells both sides first.
            if let Cut::Close(code) = cut {
                let close = CloseFrame::new(code, CUT_REASON);
                refuse(&mut sw, &to_sender_mid, &close).await;
                refuse(&mut lw, &to_listener_mid, &close).await;
                sw.shutdown().await;
                lw.shutdown().await;
            }
            Some("cut by an injected fault".into())
        }
    };
    TunnelReport {
        sender_to_listener: up.load(Ordering::Relaxed) - start_up,
        listener_to_sender: down.load(Ordering::Relaxed) - start_down,
        aborted,
    }
}

/// Sends Close 1002 to the side that broke the rules, unless a frame to it was cut in the
/// middle (a Close after a partial frame would be read as its payload).
async fn refuse<W: AsyncWrite + Unpin>(
    w: &mut Writer<W>,
    mid_frame: &AtomicBool,
    close: &CloseFrame,
) {
    if !mid_frame.load(Ordering::Acquire) {
        let _ = tokio::time::timeout(Duration::from_secs(1), w.close(close)).await;
    }
}

/// What ends a tunnel besides its two directions: shutdown (both sides are sent Close 1001,
/// queued for the writers the directions own, and the tunnel has `grace` to close) and
/// injected faults.
struct Ends<'a> {
    handles: &'a [ControlHandle; 2],
    grace: Duration,
    cancel: &'a CancellationToken,
    plan: &'a Plan<'a>,
}

impl Ends<'_> {
    /// Drives both directions; `Err((end, from_sender))` as soon as one did not end cleanly.
    async fn both(
        &self,
        mut a: Pin<&mut impl Future<Output = End>>,
        mut b: Pin<&mut impl Future<Output = End>>,
        faults: &mut FaultFeed<'_>,
    ) -> Result<(), (End, bool)> {
        let (mut a_done, mut b_done) = (false, false);
        // Made only on shutdown, so an idle tunnel carries no timer.
        let mut deadline: Option<Pin<Box<Sleep>>> = None;
        let mut watching = true;
        while !(a_done && b_done) {
            tokio::select! {
                end = a.as_mut(), if !a_done => match end { End::Closed => a_done = true, other => return Err((other, true)) },
                end = b.as_mut(), if !b_done => match end { End::Closed => b_done = true, other => return Err((other, false)) },
                changed = faults.changed.changed(), if watching => {
                    if changed.is_err() {
                        watching = false;
                        continue;
                    }
                    let now = (faults.current)(false);
                    if let Some(cut) = now.cut_now {
                        return Err((End::Cut(cut), true));
                    }
                    self.plan.update(&now);
                }
                _ = self.cancel.cancelled(), if deadline.is_none() => {
                    for h in self.handles {
                        h.queue_close(CloseFrame::new(close_code::GOING_AWAY, "The relay is shutting down."));
                    }
                    deadline = Some(Box::pin(tokio::time::sleep(self.grace)));
                }
                _ = async { if let Some(d) = deadline.as_mut() { d.await } }, if deadline.is_some() => {
                    return Err((End::Aborted("relay shut down before the tunnel closed".into()), true));
                }
            }
        }
        Ok(())
    }
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Direction<'_, R, W> {
    /// Forwards until the source closes or fails, serving the destination's control queue
    /// (its Pongs, and a Close queued on shutdown) between frames. While an injected fault
    /// shapes the tunnel, frames go through [`Direction::shaped`] instead.
    async fn run(mut self) -> End {
        loop {
            tokio::select! {
                biased;
                _ = self.dst.control_ready() => {
                    if let Err(e) = self.dst.flush_control().await {
                        return End::Aborted(format!("write failed: {e}"));
                    }
                }
                item = self.src.next_item() => match item {
                    Ok(Some(Item::Data(h))) => {
                        if self.plan.shaped() {
                            // Boxed: its delay line would otherwise be part of every
                            // tunnel's task, shaped or not.
                            match Box::pin(self.shaped(h)).await {
                                Some(end) => return end,
                                None => continue,
                            }
                        }
                        self.mid_frame.store(true, Ordering::Release);
                        let forwarded = hc_ws::forward_data(self.src, &h, self.dst).await;
                        self.mid_frame.store(false, Ordering::Release);
                        match forwarded {
                            Ok(n) => { self.bytes.fetch_add(n, Ordering::Relaxed); }
                            Err(ForwardError::Read(e)) => return read_failure(e),
                            Err(e @ ForwardError::Write(_)) => return End::Aborted(e.to_string()),
                        }
                        if let Some(end) = self.plan.over_limit() {
                            return end;
                        }
                    }
                    Ok(Some(Item::Ping | Item::Pong)) => {}
                    Ok(Some(Item::Close(close))) => {
                        return match self.dst.close(&close).await {
                            Ok(()) => End::Closed,
                            Err(e) => End::Aborted(format!("forwarding close failed: {e}")),
                        };
                    }
                    Ok(None) => return End::Aborted("peer closed TCP without a close frame".into()),
                    Err(e) => return read_failure(e),
                },
            }
        }
    }
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Direction<'_, R, W> {
    /// Forwards through a delay line while shaping is on, starting with the frame `first`: a
    /// reader queues pieces of at most one read buffer, each due `latency` after it arrived
    /// (at most [`SHAPE_QUEUE`] pieces, then the source waits); a writer sends each when it
    /// is due and once the direction's rate has paid for it. A frame may leave as several
    /// fragments of the same message (intermediaries may refragment, RFC 6455 §5.4); opcode,
    /// message boundaries and order are kept. `None` when shaping was turned off and
    /// everything queued has gone out.
    async fn shaped(&mut self, first: FrameHeader) -> Option<End> {
        let plan = self.plan;
        let index = self.index;
        let (bytes, mid_frame) = (self.bytes, self.mid_frame);
        let src = &mut *self.src;
        let dst = &mut *self.dst;
        let (tx, mut rx) = mpsc::channel::<Piece>(SHAPE_QUEUE);
        let read = async move {
            let mut next = Some(first);
            loop {
                let h = match next.take() {
                    Some(h) => h,
                    None => {
                        if !plan.shaped() {
                            let _ = tx.send(Piece::Unshaped).await;
                            return;
                        }
                        let last = match src.next_item().await {
                            Ok(Some(Item::Data(h))) => {
                                next = Some(h);
                                continue;
                            }
                            Ok(Some(Item::Ping | Item::Pong)) => continue,
                            Ok(Some(Item::Close(c))) => Piece::Close(c, Instant::now()),
                            Ok(None) => Piece::End(End::Aborted(
                                "peer closed TCP without a close frame".into(),
                            )),
                            Err(e) => Piece::End(read_failure(e)),
                        };
                        let _ = tx.send(last).await;
                        return;
                    }
                };
                let mut done = 0u64;
                let mut opcode = h.opcode;
                loop {
                    let payload = if h.payload_len == 0 {
                        Vec::new()
                    } else {
                        match src.data_chunk(&h, &mut done).await {
                            Ok(chunk) => chunk.to_vec(),
                            Err(e) => {
                                let _ = tx.send(Piece::End(read_failure(e))).await;
                                return;
                            }
                        }
                    };
                    let last = done == h.payload_len;
                    let piece = Piece::Data {
                        fin: last && h.fin,
                        opcode,
                        payload,
                        arrived: Instant::now(),
                    };
                    if tx.send(piece).await.is_err() {
                        return;
                    }
                    opcode = OpCode::Continuation;
                    if last {
                        break;
                    }
                }
            }
        };
        let write = async move {
            // When the capped link is free again: each piece occupies it for len / rate from
            // when it arrived or the link freed up, whichever is later.
            let mut busy_until = Instant::now();
            loop {
                let piece = tokio::select! {
                    biased;
                    _ = dst.control_ready() => {
                        if let Err(e) = dst.flush_control().await {
                            return Some(End::Aborted(format!("write failed: {e}")));
                        }
                        continue;
                    }
                    p = rx.recv() => p,
                };
                let (at, piece) = match piece {
                    None => return Some(End::Aborted("the shaping reader stopped".into())),
                    Some(Piece::Unshaped) => return None,
                    Some(Piece::End(end)) => return Some(end),
                    Some(Piece::Close(c, arrived)) => {
                        (arrived + plan.latency(), Piece::Close(c, arrived))
                    }
                    Some(Piece::Data {
                        fin,
                        opcode,
                        payload,
                        arrived,
                    }) => {
                        let mut at = arrived + plan.latency();
                        let rate = plan.rate(index);
                        if rate > 0 {
                            let cost = Duration::from_secs_f64(payload.len() as f64 / rate as f64);
                            busy_until = busy_until.max(arrived) + cost;
                            at = at.max(busy_until);
                        }
                        let piece = Piece::Data {
                            fin,
                            opcode,
                            payload,
                            arrived,
                        };
                        (at, piece)
                    }
                };
                loop {
                    tokio::select! {
                        biased;
                        _ = dst.control_ready() => {
                            if let Err(e) = dst.flush_control().await {
                                return Some(End::Aborted(format!("write failed: {e}")));
                            }
                        }
                        _ = sleep_until(at) => break,
                    }
                }
                match piece {
                    Piece::Data {
                        fin,
                        opcode,
                        payload,
                        ..
                    } => {
                        mid_frame.store(true, Ordering::Release);
                        let sent = dst.send_fragment(fin, opcode, &payload).await;
                        mid_frame.store(false, Ordering::Release);
                        if let Err(e) = sent {
                            return Some(End::Aborted(format!("write failed: {e}")));
                        }
                        bytes.fetch_add(payload.len() as u64, Ordering::Relaxed);
                        if let Some(end) = plan.over_limit() {
                            return Some(end);
                        }
                    }
                    Piece::Close(c, _) => {
                        return Some(match dst.close(&c).await {
                            Ok(()) => End::Closed,
                            Err(e) => End::Aborted(format!("forwarding close failed: {e}")),
                        });
                    }
                    Piece::End(_) | Piece::Unshaped => {}
                }
            }
        };
        let mut read = pin!(read);
        let mut write = pin!(write);
        let mut reading = true;
        loop {
            tokio::select! {
                _ = &mut read, if reading => reading = false,
                end = &mut write => return end,
            }
        }
    }
}

fn read_failure(e: ReadError) -> End {
    match e {
        ReadError::Protocol(_) | ReadError::Unmasked | ReadError::OutOfSequence => {
            End::Violation(e.to_string())
        }
        other => End::Aborted(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    //! The pump between two client endpoints over small in-memory pipes.

    use super::*;
    use hc_ws::Message;
    use tokio::io::{AsyncWriteExt as _, DuplexStream};

    type Client = (
        Reader<tokio::io::ReadHalf<DuplexStream>>,
        Writer<tokio::io::WriteHalf<DuplexStream>>,
    );

    /// A sender and a listener client joined by the pump; the pump's task and its cancel.
    fn tunnel(
        grace: Duration,
    ) -> (
        Client,
        Client,
        tokio::task::JoinHandle<TunnelReport>,
        CancellationToken,
    ) {
        tunnel_with(grace, TunnelFaults::default())
    }

    /// Like [`tunnel`], with `faults` applying from the start.
    fn tunnel_with(
        grace: Duration,
        faults: TunnelFaults,
    ) -> (
        Client,
        Client,
        tokio::task::JoinHandle<TunnelReport>,
        CancellationToken,
    ) {
        let (s_client, s_relay) = tokio::io::duplex(300);
        let (l_client, l_relay) = tokio::io::duplex(300);
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let options = PumpOptions {
            buffer_size: 1024,
            shutdown_grace: grace,
        };
        let pump = tokio::spawn(async move {
            let counters = [AtomicU64::new(0), AtomicU64::new(0)];
            let (_changes, changed) = watch::channel(0);
            bridge(
                s_relay,
                l_relay,
                options,
                cancel,
                [&counters[0], &counters[1]],
                FaultFeed {
                    changed,
                    current: &move |_| faults,
                },
            )
            .await
        });
        let config = Config::new(Role::Client).max_message(1 << 20);
        (
            hc_ws::split(s_client, config),
            hc_ws::split(l_client, config),
            pump,
            stop,
        )
    }

    async fn next_data<R: AsyncRead + Unpin>(r: &mut Reader<R>) -> Message {
        loop {
            match r.next_message().await.unwrap().unwrap() {
                Message::Ping | Message::Pong => continue,
                m => return m,
            }
        }
    }

    #[tokio::test]
    async fn messages_cross_both_ways_and_half_close_keeps_the_other_direction() {
        let ((mut sr, mut sw), (mut lr, mut lw), pump, _cancel) = tunnel(Duration::from_secs(5));
        let big: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        sw.send(OpCode::Text, b"hello").await.unwrap();
        assert_eq!(next_data(&mut lr).await, Message::Text("hello".into()));
        let (sent, got) = tokio::join!(sw.send(OpCode::Binary, &big), next_data(&mut lr));
        sent.unwrap();
        assert_eq!(
            got,
            Message::Binary(big.clone()),
            "a frame larger than every buffer, whole"
        );
        // The sender shuts down its half; the listener still answers, then closes.
        sw.close(&CloseFrame::new(1000, "Shutdown")).await.unwrap();
        assert_eq!(
            next_data(&mut lr).await,
            Message::Close(CloseFrame::new(1000, "Shutdown"))
        );
        lw.send(OpCode::Binary, b"still answering").await.unwrap();
        assert_eq!(
            next_data(&mut sr).await,
            Message::Binary(b"still answering".to_vec())
        );
        lw.close(&CloseFrame::new(4000, "done")).await.unwrap();
        assert_eq!(
            next_data(&mut sr).await,
            Message::Close(CloseFrame::new(4000, "done"))
        );
        let report = pump.await.unwrap();
        assert_eq!(
            report,
            TunnelReport {
                sender_to_listener: 100_005,
                listener_to_sender: 15,
                aborted: None
            }
        );
    }

    #[tokio::test]
    async fn pings_are_answered_per_hop_while_nothing_else_moves() {
        let ((mut sr, mut sw), (mut lr, mut lw), _pump, _cancel) = tunnel(Duration::from_secs(5));
        sw.ping(b"s").await.unwrap();
        lw.ping(b"l").await.unwrap();
        assert_eq!(sr.next_message().await.unwrap(), Some(Message::Pong));
        assert_eq!(lr.next_message().await.unwrap(), Some(Message::Pong));
        assert_eq!((sw.pings_unanswered(), lw.pings_unanswered()), (0, 0));
    }

    #[tokio::test]
    async fn an_abort_stays_an_abort() {
        let ((sr, sw), (mut lr, _lw), pump, _cancel) = tunnel(Duration::from_secs(5));
        drop((sr, sw));
        assert!(
            lr.next_message().await.unwrap().is_none(),
            "the listener's side is dropped, no Close"
        );
        assert!(pump.await.unwrap().aborted.is_some());
    }

    #[tokio::test]
    async fn a_side_that_breaks_the_rules_gets_1002_and_the_other_is_dropped() {
        let ((mut sr, mut sw), (mut lr, _lw), pump, _cancel) = tunnel(Duration::from_secs(5));
        // An unmasked frame, as no client may send.
        sw.get_mut()
            .write_all(&hc_protocol::frame::encode_frame(OpCode::Binary, b"x"))
            .await
            .unwrap();
        assert!(matches!(
            sr.next_message().await.unwrap(),
            Some(Message::Close(CloseFrame {
                code: Some(1002),
                ..
            }))
        ));
        assert!(lr.next_message().await.unwrap().is_none());
        assert!(pump.await.unwrap().aborted.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn shaping_delays_each_direction_and_caps_its_rate_keeping_messages_whole() {
        let shape = crate::fault::Shape {
            latency: Duration::from_millis(100),
            rate: [Some(10_000), None],
        };
        let faults = TunnelFaults {
            shape: Some(shape),
            ..TunnelFaults::default()
        };
        let ((mut sr, mut sw), (mut lr, mut lw), pump, _cancel) =
            tunnel_with(Duration::from_secs(5), faults);
        // Latency: a small message arrives 100 ms later, each way.
        let t0 = tokio::time::Instant::now();
        sw.send(OpCode::Text, b"ping").await.unwrap();
        assert_eq!(next_data(&mut lr).await, Message::Text("ping".into()));
        assert_eq!(t0.elapsed(), Duration::from_millis(100));
        lw.send(OpCode::Binary, b"pong").await.unwrap();
        assert_eq!(next_data(&mut sr).await, Message::Binary(b"pong".to_vec()));
        assert_eq!(t0.elapsed(), Duration::from_millis(200));
        // Rate: 20,000 bytes at 10,000 bytes per second take 2 s (plus the latency), and the
        // message arrives whole even though it leaves in pieces.
        let big: Vec<u8> = (0..20_000u32).map(|i| i as u8).collect();
        let t1 = tokio::time::Instant::now();
        let (sent, got) = tokio::join!(sw.send(OpCode::Binary, &big), next_data(&mut lr));
        sent.unwrap();
        assert_eq!(got, Message::Binary(big));
        let took = t1.elapsed();
        assert!(
            took >= Duration::from_millis(2000) && took <= Duration::from_millis(2110),
            "{took:?}"
        );
        // The Close keeps its place behind the data.
        sw.close(&CloseFrame::new(1000, "")).await.unwrap();
        assert!(matches!(
            next_data(&mut lr).await,
            Message::Close(CloseFrame {
                code: Some(1000),
                ..
            })
        ));
        lw.close(&CloseFrame::new(1000, "")).await.unwrap();
        let report = pump.await.unwrap();
        assert_eq!(report.aborted, None);
        assert_eq!(report.sender_to_listener, 20_004);
    }

    #[tokio::test]
    async fn a_tunnel_is_cut_after_the_bytes_asked_with_a_close_to_both_sides() {
        let faults = TunnelFaults {
            cut_after: Some((1_000, Cut::Close(4001))),
            ..TunnelFaults::default()
        };
        let ((mut sr, mut sw), (mut lr, _lw), pump, _cancel) =
            tunnel_with(Duration::from_secs(5), faults);
        let send = async {
            for _ in 0..3 {
                // The last may find the tunnel cut already.
                let _ = sw.send(OpCode::Binary, &[1u8; 400]).await;
            }
        };
        let read = async {
            let mut got = 0;
            loop {
                match next_data(&mut lr).await {
                    Message::Binary(b) => got += b.len(),
                    other => return (got, other),
                }
            }
        };
        let ((), (got, close)) = tokio::join!(send, read);
        assert_eq!(got, 1_200, "cut after the frame that crossed 1,000 bytes");
        assert!(matches!(
            close,
            Message::Close(CloseFrame {
                code: Some(4001),
                ..
            })
        ));
        assert!(matches!(
            next_data(&mut sr).await,
            Message::Close(CloseFrame {
                code: Some(4001),
                ..
            })
        ));
        assert_eq!(
            pump.await.unwrap().aborted.as_deref(),
            Some("cut by an injected fault")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_sends_1001_both_ways_and_gives_up_after_the_grace() {
        let ((mut sr, _sw), (mut lr, _lw), pump, cancel) = tunnel(Duration::from_secs(5));
        let t0 = tokio::time::Instant::now();
        cancel.cancel();
        assert!(matches!(
            sr.next_message().await.unwrap(),
            Some(Message::Close(CloseFrame {
                code: Some(1001),
                ..
            }))
        ));
        assert!(matches!(
            lr.next_message().await.unwrap(),
            Some(Message::Close(CloseFrame {
                code: Some(1001),
                ..
            }))
        ));
        // Neither side answers the Close: the tunnel is dropped when the grace ends.
        let report = pump.await.unwrap();
        assert_eq!(
            report.aborted.as_deref(),
            Some("relay shut down before the tunnel closed")
        );
        assert_eq!(t0.elapsed(), Duration::from_secs(5));
    }
}
