//! Bytes between a relayed WebSocket and a TCP socket (or any byte stream), both ways, with
//! half-close (PROTOCOL.md §6.4): the endpoint's EOF becomes a Close frame and the relay's
//! Close becomes the endpoint's EOF, while the other direction keeps flowing until it ends
//! too. An abort on one side (TCP reset, relay connection dropped without Close) aborts the
//! other: the TCP side is reset (SO_LINGER 0), the WebSocket side dropped without a Close.
//!
//! Two named pumps, each owning what it writes: relay -> TCP owns the TCP write half; TCP ->
//! relay owns the WebSocket writer and also sends the Pongs the relay's Pings queued (between
//! frames). Memory is bounded: one read buffer per direction, and the TCP -> relay buffer is
//! allocated only when the socket is readable.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::BufMut as _;
use hc_protocol::frame::{CloseFrame, OpCode, close_code};
use hc_ws::{Config, HEADROOM, Item, Reader, Role, Writer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;

use crate::handshake::WsStream;

/// The non-relay side's read half as the bridge sees it.
pub trait Source: AsyncRead + Unpin + Send {
    /// Whether [`Source::ready`] really waits for readability (a TCP socket): then no buffer
    /// is held while the side is idle. Otherwise the read itself waits, with its buffer.
    const WAITS_FOR_READINESS: bool = false;

    /// Waits until a read will not block (when [`Source::WAITS_FOR_READINESS`]).
    fn ready(&mut self) -> impl Future<Output = std::io::Result<()>> + Send {
        async { Ok(()) }
    }
}

impl Source for OwnedReadHalf {
    const WAITS_FOR_READINESS: bool = true;

    fn ready(&mut self) -> impl Future<Output = std::io::Result<()>> + Send {
        self.readable()
    }
}

impl<T: AsyncRead + Send> Source for ReadHalf<T> {}

/// Payload bytes moved each way and how it ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BridgeReport {
    /// Bytes from the relay to the TCP side.
    pub to_tcp: u64,
    /// Bytes from the TCP side to the relay.
    pub from_tcp: u64,
    /// `None` when both sides closed cleanly; else why it was aborted.
    pub aborted: Option<String>,
}

enum End {
    Closed,
    Aborted(String),
}

/// Pumps between the relay and a TCP socket until both directions have ended, or one
/// aborts; an abort resets the TCP connection.
pub async fn bridge(ws: WsStream, tcp: TcpStream, buffer: usize) -> BridgeReport {
    bridge_with_early(ws, tcp, &[], buffer).await
}

/// Like [`bridge`], with `early` bytes the TCP side sent before the tunnel was open (a
/// proxy client's first bytes behind its CONNECT head); they go to the relay first.
pub async fn bridge_with_early(
    ws: WsStream,
    tcp: TcpStream,
    early: &[u8],
    buffer: usize,
) -> BridgeReport {
    let _ = tcp.set_nodelay(true);
    let (mut tr, mut tw) = tcp.into_split();
    let report = pump_both(ws.io, early, &mut tr, &mut tw, buffer).await;
    if report.aborted.is_some()
        && let Ok(tcp) = tr.reunite(tw)
    {
        let _ = tcp.set_zero_linger();
    }
    report
}

/// Like [`bridge`], for any byte stream (an in-memory pipe, say).
pub async fn bridge_stream<S: AsyncRead + AsyncWrite + Send + 'static>(
    ws: WsStream,
    stream: S,
    buffer: usize,
) -> BridgeReport {
    let (mut r, mut w) = tokio::io::split(stream);
    pump_both(ws.io, &[], &mut r, &mut w, buffer).await
}

/// The bridge over any relay socket (in-memory pipes in tests); `early` goes to the relay
/// before anything read from `src`.
pub async fn pump_both<IO, R, W>(
    ws: IO,
    early: &[u8],
    src: &mut R,
    dst: &mut W,
    buffer: usize,
) -> BridgeReport
where
    IO: AsyncRead + AsyncWrite + Unpin + Send,
    R: Source,
    W: AsyncWrite + Unpin + Send,
{
    let (mut reader, mut writer) = hc_ws::split(ws, Config::new(Role::Client).read_buffer(buffer));
    let (to_tcp, from_tcp) = (AtomicU64::new(0), AtomicU64::new(0));
    // Pinned where they are made: passed by value and pinned inside `both`, each future would
    // be stored twice in the task.
    let aborted = {
        let a = std::pin::pin!(ws_to_tcp(&mut reader, dst, &to_tcp));
        let b = std::pin::pin!(async {
            if !early.is_empty() {
                if let Err(e) = writer.send(OpCode::Binary, early).await {
                    return End::Aborted(format!("writing to the relay: {e}"));
                }
                from_tcp.fetch_add(early.len() as u64, Ordering::Relaxed);
            }
            tcp_to_ws(src, &mut writer, buffer, &from_tcp).await
        });
        both(a, b).await
    };
    if aborted.is_none() {
        writer.shutdown().await;
    }
    BridgeReport {
        to_tcp: to_tcp.into_inner(),
        from_tcp: from_tcp.into_inner(),
        aborted,
    }
}

async fn both(
    mut a: Pin<&mut impl Future<Output = End>>,
    mut b: Pin<&mut impl Future<Output = End>>,
) -> Option<String> {
    let (mut a_done, mut b_done) = (false, false);
    while !(a_done && b_done) {
        tokio::select! {
            end = a.as_mut(), if !a_done => match end { End::Closed => a_done = true, End::Aborted(why) => return Some(why) },
            end = b.as_mut(), if !b_done => match end { End::Closed => b_done = true, End::Aborted(why) => return Some(why) },
        }
    }
    None
}

/// Relay -> TCP: data payloads are written to TCP; the relay's Close shuts TCP's write side.
async fn ws_to_tcp<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    reader: &mut Reader<R>,
    tcp: &mut W,
    bytes: &AtomicU64,
) -> End {
    loop {
        match reader.next_item().await {
            Ok(Some(Item::Data(h))) => {
                let mut done = 0;
                while done < h.payload_len {
                    let chunk = match reader.data_chunk(&h, &mut done).await {
                        Ok(c) => c,
                        Err(e) => return End::Aborted(format!("reading from the relay: {e}")),
                    };
                    if let Err(e) = tcp.write_all(chunk).await {
                        return End::Aborted(format!("writing to the endpoint: {e}"));
                    }
                }
                bytes.fetch_add(h.payload_len, Ordering::Relaxed);
            }
            Ok(Some(Item::Ping | Item::Pong)) => {}
            Ok(Some(Item::Close(_))) => {
                let _ = tcp.shutdown().await;
                return End::Closed;
            }
            Ok(None) => {
                return End::Aborted("relay closed the connection without a close frame".into());
            }
            Err(e) => return End::Aborted(format!("reading from the relay: {e}")),
        }
    }
}

/// TCP -> relay: each read becomes one masked binary frame written in place; EOF becomes
/// Close 1000. Queued Pongs go out between frames, also while the TCP side is idle.
async fn tcp_to_ws<R: Source, W: AsyncWrite + Unpin>(
    tcp: &mut R,
    ws: &mut Writer<W>,
    buffer: usize,
    bytes: &AtomicU64,
) -> End {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        if R::WAITS_FOR_READINESS {
            let readable = tokio::select! {
                biased;
                _ = ws.control_ready() => {
                    if let Err(e) = ws.flush_control().await {
                        return End::Aborted(format!("writing to the relay: {e}"));
                    }
                    continue;
                }
                r = tcp.ready() => r,
            };
            if let Err(e) = readable {
                return End::Aborted(format!("reading from the endpoint: {e}"));
            }
        }
        if buf.is_empty() {
            // Not zeroed: only the headroom is written, the read fills the rest (a zeroed
            // buffer cost a memset of the whole buffer per message, issue 16's profile).
            buf = Vec::with_capacity(HEADROOM + buffer);
            buf.resize(HEADROOM, 0);
        }
        buf.truncate(HEADROOM);
        // Reading is cancel-safe: a Pong waiting for the writer interrupts a read that waits.
        let mut room = (&mut buf).limit(buffer);
        let read = tokio::select! {
            biased;
            _ = ws.control_ready() => None,
            r = tcp.read_buf(&mut room) => Some(r),
        };
        let n = match read {
            None => {
                if let Err(e) = ws.flush_control().await {
                    return End::Aborted(format!("writing to the relay: {e}"));
                }
                continue;
            }
            Some(Ok(0)) => {
                return match ws.close(&CloseFrame::new(close_code::NORMAL, "")).await {
                    Ok(()) => End::Closed,
                    Err(e) => End::Aborted(format!("writing to the relay: {e}")),
                };
            }
            Some(Ok(n)) => n,
            Some(Err(e)) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Some(Err(e)) => return End::Aborted(format!("reading from the endpoint: {e}")),
        };
        if let Err(e) = ws
            .send_in_place(OpCode::Binary, &mut buf[..HEADROOM + n])
            .await
        {
            return End::Aborted(format!("writing to the relay: {e}"));
        }
        bytes.fetch_add(n as u64, Ordering::Relaxed);
        if n < buffer && R::WAITS_FOR_READINESS {
            // Probably drained: do not hold the buffer while the socket is idle.
            buf = Vec::new();
        }
    }
}
