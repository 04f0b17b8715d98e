//! Bytes between a relayed WebSocket and a TCP socket (or any byte stream), both ways, with half-close
//! (PROTOCOL.md §6.4): the endpoint's EOF becomes a Close frame and the relay's Close becomes
//! the endpoint's EOF, while the other direction keeps flowing until it ends too. An abort on
//! one side (TCP reset, relay connection dropped without Close) aborts the other: the TCP
//! side is reset (SO_LINGER 0), the WebSocket side dropped without a Close.
//!
//! Two named pumps share the WebSocket writer (the relay's pings are answered from the
//! reading pump). Memory is bounded: one read buffer per direction, and the TCP->WebSocket
//! buffer is allocated only when the socket is readable.

use std::sync::atomic::{AtomicU64, Ordering};

use hc_protocol::frame::{self, CloseFrame, FrameHeader, OpCode, close_code};
use hc_ws::{FrameReader, HEADROOM, Peer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::Mutex;

/// The non-relay side's read half as the bridge sees it.
pub trait Source: AsyncRead + Unpin + Send {
    /// Waits until a read will not block, so no buffer is held while the side is idle.
    /// The default does not wait (the read itself then waits, with its buffer).
    fn ready(&mut self) -> impl Future<Output = std::io::Result<()>> + Send {
        async { Ok(()) }
    }
}

impl Source for OwnedReadHalf {
    fn ready(&mut self) -> impl Future<Output = std::io::Result<()>> + Send {
        self.readable()
    }
}

impl<T: AsyncRead + Send> Source for ReadHalf<T> {}

use crate::handshake::{Prefixed, WsStream};

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

type WsWriter = Mutex<WriteHalf<Prefixed>>;

/// Pumps between the relay and a TCP socket until both directions have ended, or one
/// aborts; an abort resets the TCP connection.
pub async fn bridge(ws: WsStream, tcp: TcpStream, buffer: usize) -> BridgeReport {
    let _ = tcp.set_nodelay(true);
    let (mut tr, mut tw) = tcp.into_split();
    let report = pump_both(ws, &mut tr, &mut tw, buffer).await;
    if report.aborted.is_some()
        && let Ok(tcp) = tr.reunite(tw)
    {
        let _ = tcp.set_zero_linger();
    }
    report
}

/// Pumps between the relay and any byte stream (e.g. one end of a `tokio::io::duplex`);
/// an abort just drops the stream.
pub async fn bridge_stream<S: AsyncRead + AsyncWrite + Send + 'static>(ws: WsStream, stream: S, buffer: usize) -> BridgeReport {
    let (mut r, mut w) = tokio::io::split(stream);
    pump_both(ws, &mut r, &mut w, buffer).await
}

async fn pump_both<R: Source, W: AsyncWrite + Unpin + Send>(ws: WsStream, src: &mut R, dst: &mut W, buffer: usize) -> BridgeReport {
    let (wr, ww) = tokio::io::split(ws.io);
    let writer: WsWriter = Mutex::new(ww);
    let mut reader = FrameReader::new(wr, Peer::Server, buffer);
    let (to_tcp, from_tcp) = (AtomicU64::new(0), AtomicU64::new(0));
    let aborted = {
        let a = ws_to_tcp(&mut reader, &writer, dst, &to_tcp);
        let b = tcp_to_ws(src, &writer, buffer, &from_tcp);
        both(a, b).await
    };
    if aborted.is_none() {
        let _ = writer.lock().await.shutdown().await;
    }
    BridgeReport { to_tcp: to_tcp.into_inner(), from_tcp: from_tcp.into_inner(), aborted }
}

async fn both(a: impl Future<Output = End>, b: impl Future<Output = End>) -> Option<String> {
    tokio::pin!(a, b);
    let (mut a_done, mut b_done) = (false, false);
    while !(a_done && b_done) {
        tokio::select! {
            end = &mut a, if !a_done => match end { End::Closed => a_done = true, End::Aborted(why) => return Some(why) },
            end = &mut b, if !b_done => match end { End::Closed => b_done = true, End::Aborted(why) => return Some(why) },
        }
    }
    None
}

async fn write_masked<W: AsyncWrite + Unpin>(w: &Mutex<W>, opcode: OpCode, payload: &[u8]) -> std::io::Result<()> {
    hc_ws::write_masked(&mut *w.lock().await, opcode, payload, rand::random()).await
}

/// Relay -> TCP: data frames' payloads are written to TCP; a Close shuts TCP's write side.
async fn ws_to_tcp<W: AsyncWrite + Unpin>(
    reader: &mut FrameReader<ReadHalf<Prefixed>>,
    ws: &WsWriter,
    tcp: &mut W,
    bytes: &AtomicU64,
) -> End {
    loop {
        let header = match reader.header().await {
            Ok(Some(h)) => h,
            Ok(None) => return End::Aborted("relay closed the connection without a close frame".into()),
            Err(e) => return End::Aborted(format!("reading from the relay: {e}")),
        };
        match header.opcode {
            OpCode::Ping | OpCode::Pong | OpCode::Close => {
                let payload = match reader.payload(&header).await {
                    Ok(p) => p,
                    Err(e) => return End::Aborted(format!("reading from the relay: {e}")),
                };
                match header.opcode {
                    OpCode::Ping => {
                        if let Err(e) = write_masked(ws, OpCode::Pong, &payload).await {
                            return End::Aborted(format!("writing to the relay: {e}"));
                        }
                    }
                    OpCode::Close => {
                        let _ = tcp.shutdown().await;
                        return End::Closed;
                    }
                    _ => {}
                }
            }
            _ => {
                let mut left = header.payload_len;
                while left > 0 {
                    let range = match reader.chunk(left).await {
                        Ok(r) => r,
                        Err(e) => return End::Aborted(format!("reading from the relay: {e}")),
                    };
                    left -= range.len() as u64;
                    if let Err(e) = tcp.write_all(&reader.buf_mut()[range]).await {
                        return End::Aborted(format!("writing to the endpoint: {e}"));
                    }
                }
                bytes.fetch_add(header.payload_len, Ordering::Relaxed);
            }
        }
    }
}

/// TCP -> relay: each read becomes one masked binary frame; EOF becomes Close 1000.
async fn tcp_to_ws<R: Source>(tcp: &mut R, ws: &WsWriter, buffer: usize, bytes: &AtomicU64) -> End {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        if let Err(e) = tcp.ready().await {
            return End::Aborted(format!("reading from the endpoint: {e}"));
        }
        if buf.is_empty() {
            buf = vec![0; HEADROOM + buffer];
        }
        let n = match tcp.read(&mut buf[HEADROOM..]).await {
            Ok(0) => {
                let close = CloseFrame::new(close_code::NORMAL, "");
                return match write_masked(ws, OpCode::Close, &close.payload()).await {
                    Ok(()) => End::Closed,
                    Err(e) => End::Aborted(format!("writing to the relay: {e}")),
                };
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return End::Aborted(format!("reading from the endpoint: {e}")),
        };
        let mask: [u8; 4] = rand::random();
        let mut head = [0u8; frame::MAX_HEADER_LEN];
        let head_len = FrameHeader { fin: true, opcode: OpCode::Binary, mask: Some(mask), payload_len: n as u64 }.encode(&mut head);
        frame::apply_mask(&mut buf[HEADROOM..HEADROOM + n], mask, 0);
        buf[HEADROOM - head_len..HEADROOM].copy_from_slice(&head[..head_len]);
        let result = {
            let mut w = ws.lock().await;
            match w.write_all(&buf[HEADROOM - head_len..HEADROOM + n]).await {
                Ok(()) => w.flush().await,
                Err(e) => Err(e),
            }
        };
        if let Err(e) = result {
            return End::Aborted(format!("writing to the relay: {e}"));
        }
        bytes.fetch_add(n as u64, Ordering::Relaxed);
        if n < buffer {
            // Probably drained: do not hold the buffer while the socket is idle.
            buf = Vec::new();
        }
    }
}
