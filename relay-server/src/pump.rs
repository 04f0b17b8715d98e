//! The data phase of a relayed WebSocket (PROTOCOL.md §6.4): frames are copied between the
//! sender's and the listener's sockets as they arrive, unmasked on the way (both peers are
//! clients of the relay), with opcode and FIN kept so message boundaries survive. Nothing is
//! buffered beyond one read buffer per direction, so a slow reader slows its writer.
//!
//! A sender or listener that breaks the framing rules (bad header, no mask, a continuation
//! out of sequence) gets Close 1002 and the other side is dropped.
//!
//! Per hop: Pings are answered, Pongs dropped. A Close from one side is forwarded with its
//! code and reason, and the other direction keeps flowing until that side closes too
//! (half-close). A side that drops TCP without a Close makes the relay drop the other side's
//! TCP as well: an abort stays an abort, it is never turned into a clean close.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use hc_protocol::frame::{self, CloseFrame, FrameHeader, OpCode, close_code};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::Mutex;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;

use crate::ws::{self, FrameReader, ReadError};

/// The write half of one socket, shared by the pump that forwards into it and the pump
/// that answers its pings. The lock is held for a whole frame so frames never interleave.
struct Side<W> {
    writer: Mutex<W>,
    close_sent: AtomicBool,
}

impl<W: AsyncWrite + Unpin> Side<W> {
    /// Sends a Close unless one was already sent to this side.
    async fn close(&self, close: &CloseFrame) -> std::io::Result<()> {
        let mut w = self.writer.lock().await;
        if self.close_sent.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        ws::write_close(&mut *w, close).await
    }
}

/// How one direction ended.
#[derive(Debug)]
enum End {
    /// The source sent Close, which was forwarded.
    Closed,
    /// The source vanished or misbehaved, or the destination failed.
    Aborted(String),
}

/// How a tunnel ended, with the payload bytes moved each way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelReport {
    /// Payload bytes from sender to listener.
    pub sender_to_listener: u64,
    /// Payload bytes from listener to sender.
    pub listener_to_sender: u64,
    /// `None` for a clean close on both sides, else why it was aborted.
    pub aborted: Option<String>,
}

/// Settings of the data phase.
#[derive(Debug, Clone, Copy)]
pub struct PumpOptions {
    /// Read buffer per direction (allocated only while data flows).
    pub buffer_size: usize,
    /// How long a tunnel may take to close after the relay starts shutting down.
    pub shutdown_grace: Duration,
}

/// Relays frames between `sender` and `listener` until both have closed or one aborts.
pub async fn bridge<S, L>(sender: S, listener: L, options: PumpOptions, cancel: CancellationToken) -> TunnelReport
where
    S: AsyncRead + AsyncWrite + Send + 'static,
    L: AsyncRead + AsyncWrite + Send + 'static,
{
    let (sr, sw) = tokio::io::split(sender);
    let (lr, lw) = tokio::io::split(listener);
    let s_side = Arc::new(Side { writer: Mutex::new(sw), close_sent: AtomicBool::new(false) });
    let l_side = Arc::new(Side { writer: Mutex::new(lw), close_sent: AtomicBool::new(false) });
    let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
    let mut s_reader = FrameReader::new(sr, ws::Peer::Client, options.buffer_size);
    let mut l_reader = FrameReader::new(lr, ws::Peer::Client, options.buffer_size);
    let aborted = {
        let a = pump(&mut s_reader, &s_side, &l_side, &up);
        let b = pump(&mut l_reader, &l_side, &s_side, &down);
        run_both(a, b, &s_side, &l_side, options.shutdown_grace, cancel).await
    };
    if aborted.is_none() {
        finish(&s_side).await;
        finish(&l_side).await;
    }
    TunnelReport { sender_to_listener: up.into_inner(), listener_to_sender: down.into_inner(), aborted }
}

/// Drives both directions; returns why the tunnel aborted, or `None` when both closed.
async fn run_both<S, L>(
    a: impl Future<Output = End>,
    b: impl Future<Output = End>,
    s_side: &Arc<Side<WriteHalf<S>>>,
    l_side: &Arc<Side<WriteHalf<L>>>,
    grace: Duration,
    cancel: CancellationToken,
) -> Option<String>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
    L: AsyncRead + AsyncWrite + Send + 'static,
{
    tokio::pin!(a, b);
    let (mut a_done, mut b_done, mut deadline) = (false, false, None::<Instant>);
    while !(a_done && b_done) {
        tokio::select! {
            end = &mut a, if !a_done => match end { End::Closed => a_done = true, End::Aborted(why) => return Some(why) },
            end = &mut b, if !b_done => match end { End::Closed => b_done = true, End::Aborted(why) => return Some(why) },
            _ = cancel.cancelled(), if deadline.is_none() => {
                deadline = Some(Instant::now() + grace);
                // Sent from a task of its own: taking a writer lock waits for the frame in
                // flight, which needs the pumps above to keep running.
                let (s, l) = (s_side.clone(), l_side.clone());
                tokio::spawn(async move {
                    let close = CloseFrame::new(close_code::GOING_AWAY, "The relay is shutting down.");
                    let _ = tokio::join!(s.close(&close), l.close(&close));
                });
            }
            _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                return Some("relay shut down before the tunnel closed".into());
            }
        }
    }
    None
}

/// After both Closes: close TCP (and TLS) from the relay's side, as the server should.
async fn finish<W: AsyncWrite + Unpin>(side: &Side<W>) {
    let mut w = side.writer.lock().await;
    let _ = timeout(Duration::from_secs(1), w.shutdown()).await;
}

/// Copies frames from `reader` (the `src` socket) to `dst` until `src` closes or fails.
async fn pump<R, W1, W2>(reader: &mut FrameReader<ReadHalf<R>>, src: &Side<W1>, dst: &Side<W2>, bytes: &AtomicU64) -> End
where
    R: AsyncRead,
    W1: AsyncWrite + Unpin,
    W2: AsyncWrite + Unpin,
{
    // Inside a fragmented message: only continuations may follow, and a continuation needs
    // one to continue (RFC 6455 §5.4). Checked here so no listener is sent a broken sequence.
    let mut in_message = false;
    loop {
        let header = match reader.header().await {
            Ok(Some(h)) => h,
            Ok(None) => return End::Aborted("peer closed TCP without a close frame".into()),
            Err(e) => return protocol_failure(src, e).await,
        };
        let step = match header.opcode {
            OpCode::Ping => pong(reader, &header, src).await,
            OpCode::Pong => reader.payload(&header).await.map(|_| ()).map_err(|e| e.to_string()),
            OpCode::Close => return forward_close(reader, &header, src, dst).await,
            op => {
                if (op == OpCode::Continuation) != in_message {
                    return protocol_failure(src, ReadError::OutOfSequence).await;
                }
                in_message = !header.fin;
                forward_data(reader, &header, dst, bytes).await
            }
        };
        if let Err(why) = step {
            return End::Aborted(why);
        }
    }
}

async fn protocol_failure<W: AsyncWrite + Unpin>(src: &Side<W>, e: ReadError) -> End {
    if matches!(e, ReadError::Protocol(_) | ReadError::Unmasked | ReadError::OutOfSequence) {
        let _ = src.close(&CloseFrame::new(close_code::PROTOCOL_ERROR, &e.to_string())).await;
    }
    End::Aborted(e.to_string())
}

async fn pong<R: AsyncRead, W: AsyncWrite + Unpin>(
    reader: &mut FrameReader<ReadHalf<R>>,
    h: &FrameHeader,
    src: &Side<W>,
) -> Result<(), String> {
    let payload = reader.payload(h).await.map_err(|e| e.to_string())?;
    let mut w = src.writer.lock().await;
    if src.close_sent.load(Ordering::Acquire) {
        return Ok(());
    }
    ws::write_frame(&mut *w, OpCode::Pong, &payload).await.map_err(|e| format!("write failed: {e}"))
}

async fn forward_close<R: AsyncRead, W1: AsyncWrite + Unpin, W2: AsyncWrite + Unpin>(
    reader: &mut FrameReader<ReadHalf<R>>,
    h: &FrameHeader,
    src: &Side<W1>,
    dst: &Side<W2>,
) -> End {
    let close = match reader.payload(h).await.and_then(|p| Ok(CloseFrame::parse(&p)?)) {
        Ok(c) => c,
        Err(e) => return protocol_failure(src, e).await,
    };
    match dst.close(&close).await {
        Ok(()) => End::Closed,
        Err(e) => End::Aborted(format!("forwarding close failed: {e}")),
    }
}

/// Streams one data frame: header rewritten unmasked in front of the first chunk, each chunk
/// unmasked in place and written with one call.
async fn forward_data<R: AsyncRead, W: AsyncWrite + Unpin>(
    reader: &mut FrameReader<ReadHalf<R>>,
    h: &FrameHeader,
    dst: &Side<W>,
    bytes: &AtomicU64,
) -> Result<(), String> {
    let mask = h.mask.unwrap_or_default();
    let mut head = [0u8; frame::MAX_HEADER_LEN];
    let head_len = FrameHeader::new(h.fin, h.opcode, h.payload_len).encode(&mut head);
    let mut w = dst.writer.lock().await;
    let discard = dst.close_sent.load(Ordering::Acquire);
    let mut offset = 0u64;
    loop {
        let range = reader.chunk(h.payload_len - offset).await.map_err(|e| e.to_string())?;
        let buf = reader.buf_mut();
        frame::apply_mask(&mut buf[range.clone()], mask, offset);
        let start = if offset == 0 {
            buf[range.start - head_len..range.start].copy_from_slice(&head[..head_len]);
            range.start - head_len
        } else {
            range.start
        };
        offset += range.len() as u64;
        if !discard {
            w.write_all(&buf[start..range.end]).await.map_err(|e| format!("write failed: {e}"))?;
        }
        if offset == h.payload_len {
            break;
        }
    }
    bytes.fetch_add(h.payload_len, Ordering::Relaxed);
    w.flush().await.map_err(|e| format!("write failed: {e}"))
}
