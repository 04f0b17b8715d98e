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

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use hc_protocol::frame::{CloseFrame, close_code};
use hc_ws::{Config, ControlHandle, ForwardError, Item, ReadError, Reader, Role, Writer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;

/// How one direction ended.
#[derive(Debug)]
enum End {
    /// The source sent Close, which was forwarded.
    Closed,
    /// The source broke the framing rules: it gets Close 1002, the other side is dropped.
    Violation(String),
    /// The source vanished, or the destination failed, or shutdown ran out of time.
    Aborted(String),
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

/// One direction's view: where it reads, where it writes, what it counts.
struct Direction<'a, R, W> {
    src: &'a mut Reader<R>,
    dst: &'a mut Writer<W>,
    bytes: &'a AtomicU64,
    /// Set while a frame is half written to `dst` (a Close written then would corrupt it).
    mid_frame: &'a AtomicBool,
}

/// Relays frames between `sender` and `listener` until both have closed or one aborts.
pub(crate) async fn bridge<S, L>(
    sender: S,
    listener: L,
    options: PumpOptions,
    cancel: CancellationToken,
    counters: [&AtomicU64; 2],
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
    // Pinned where they are made: passed by value and pinned inside `both`, each future would
    // be stored twice in the task (once as the argument, once pinned).
    let outcome = {
        let a = std::pin::pin!(
            Direction {
                src: &mut sr,
                dst: &mut lw,
                bytes: up,
                mid_frame: &to_listener_mid
            }
            .run()
        );
        let b = std::pin::pin!(
            Direction {
                src: &mut lr,
                dst: &mut sw,
                bytes: down,
                mid_frame: &to_sender_mid
            }
            .run()
        );
        both(a, b, &handles, options.shutdown_grace, &cancel).await
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

/// Drives both directions; `Err((end, from_sender))` as soon as one did not end cleanly. On
/// shutdown both sides are sent Close 1001 (queued for the writers the directions own) and
/// the tunnel has `grace` to close.
async fn both(
    mut a: Pin<&mut impl Future<Output = End>>,
    mut b: Pin<&mut impl Future<Output = End>>,
    handles: &[ControlHandle; 2],
    grace: Duration,
    cancel: &CancellationToken,
) -> Result<(), (End, bool)> {
    let (mut a_done, mut b_done) = (false, false);
    // Made only on shutdown, so an idle tunnel carries no timer.
    let mut deadline: Option<Pin<Box<Sleep>>> = None;
    while !(a_done && b_done) {
        tokio::select! {
            end = a.as_mut(), if !a_done => match end { End::Closed => a_done = true, other => return Err((other, true)) },
            end = b.as_mut(), if !b_done => match end { End::Closed => b_done = true, other => return Err((other, false)) },
            _ = cancel.cancelled(), if deadline.is_none() => {
                for h in handles {
                    h.queue_close(CloseFrame::new(close_code::GOING_AWAY, "The relay is shutting down."));
                }
                deadline = Some(Box::pin(tokio::time::sleep(grace)));
            }
            _ = async { if let Some(d) = deadline.as_mut() { d.await } }, if deadline.is_some() => {
                return Err((End::Aborted("relay shut down before the tunnel closed".into()), true));
            }
        }
    }
    Ok(())
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Direction<'_, R, W> {
    /// Forwards until the source closes or fails, serving the destination's control queue
    /// (its Pongs, and a Close queued on shutdown) between frames.
    async fn run(self) -> End {
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
                        self.mid_frame.store(true, Ordering::Release);
                        let forwarded = hc_ws::forward_data(self.src, &h, self.dst).await;
                        self.mid_frame.store(false, Ordering::Release);
                        match forwarded {
                            Ok(n) => { self.bytes.fetch_add(n, Ordering::Relaxed); }
                            Err(ForwardError::Read(e)) => return read_failure(e),
                            Err(e @ ForwardError::Write(_)) => return End::Aborted(e.to_string()),
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
    use hc_protocol::frame::OpCode;
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
            bridge(
                s_relay,
                l_relay,
                options,
                cancel,
                [&counters[0], &counters[1]],
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
