//! One WebSocket endpoint (RFC 6455 §5–§7), used by every side: the relay's pump, control
//! channel and HTTP mode, and the client's bridge, listener and HTTP mode.
//!
//! [`split`] turns an upgraded socket into a [`Reader`] and a [`Writer`] that share a small
//! state:
//!
//! - **Role.** A server reads masked frames and writes unmasked ones; a client the reverse,
//!   masking with a random source of its own (never a constant mask).
//! - **Close state.** Open, closed locally (we sent Close), closed by the peer (we received
//!   Close), closed (both). Half-close is first-class: after receiving a Close the writer may
//!   still send data (.NET's `Shutdown` works this way); after sending one it may not.
//! - **Control-frame policy.** The reader never writes. A Ping it reads queues a Pong, and a
//!   Close it reads queues the Close reply when the endpoint echoes closes ([`CloseReply`]).
//!   The queue is bounded: a Pong that does not fit is dropped (the peer's next Ping gets
//!   one). Whoever owns the writer serves the queue between frames: await
//!   [`Writer::control_ready`], then call [`Writer::flush_control`]. Pings this side sends
//!   are counted until a Pong comes back ([`Writer::pings_unanswered`]).
//! - **Bounds.** Every write can carry a deadline ([`Config::write_timeout`]); whole
//!   messages are read up to [`Config::max_message`] bytes.
//! - **Two read APIs.** [`Reader::next_item`] streams frames (data payloads chunk by chunk,
//!   for the pump and the bridges); [`Reader::next_message`] returns whole messages (control
//!   channels, HTTP mode). Both are cancel-safe at frame boundaries.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hc_protocol::frame::{self, CloseFrame, FrameHeader, OpCode};
use rand::rngs::SmallRng;
use rand::{Rng as _, SeedableRng as _};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::Notify;

use crate::message::{Assembler, Message};
use crate::reader::{FrameReader, HEADROOM, Peer, ReadError};

/// Which side of the WebSocket this endpoint is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Accepted the upgrade: reads masked frames, writes unmasked ones (the relay).
    Server,
    /// Sent the upgrade: reads unmasked frames, writes masked ones (listeners and senders).
    Client,
}

impl Role {
    fn reads_from(self) -> Peer {
        match self {
            Role::Server => Peer::Client,
            Role::Client => Peer::Server,
        }
    }
}

/// What the endpoint does with a Close it receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReply {
    /// Queue the same code back (control channels, HTTP rendezvous).
    Echo,
    /// Nothing: the caller decides (the relay forwards it to the other side of a tunnel,
    /// a bridge answers once its own direction has ended).
    Manual,
}

/// How an endpoint behaves.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Which side this is.
    pub role: Role,
    /// Read buffer for streamed frames (allocated only while data flows).
    pub read_buffer: usize,
    /// Largest whole message [`Reader::next_message`] assembles.
    pub max_message: usize,
    /// Longest time one frame write may take; `None` waits as long as the peer does.
    pub write_timeout: Option<Duration>,
    /// What a received Close triggers.
    pub close_reply: CloseReply,
    /// Control frames (Pongs, the Close reply) that may wait for the writer.
    pub control_queue: usize,
}

impl Config {
    /// Defaults for `role`: 64 KiB buffer and messages, no write deadline, manual Close
    /// replies, 8 queued control frames.
    pub fn new(role: Role) -> Self {
        Config {
            role,
            read_buffer: 64 * 1024,
            max_message: 64 * 1024,
            write_timeout: None,
            close_reply: CloseReply::Manual,
            control_queue: 8,
        }
    }

    /// With whole messages up to `max` bytes.
    pub fn max_message(mut self, max: usize) -> Self {
        self.max_message = max;
        self
    }

    /// With a streaming read buffer of `size` bytes.
    pub fn read_buffer(mut self, size: usize) -> Self {
        self.read_buffer = size;
        self
    }

    /// With a deadline on every write.
    pub fn write_timeout(mut self, limit: Option<Duration>) -> Self {
        self.write_timeout = limit;
        self
    }

    /// Echoing received Closes.
    pub fn echo_close(mut self) -> Self {
        self.close_reply = CloseReply::Echo;
        self
    }
}

const CLOSE_SENT: u8 = 1;
const CLOSE_RECEIVED: u8 = 2;

/// Where an endpoint is in its closing handshake (RFC 6455 §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseState {
    /// Neither side has sent Close.
    Open,
    /// We sent Close; the peer may still send data until its Close.
    ClosedLocally,
    /// The peer sent Close; we may still send data until ours.
    ClosedByPeer,
    /// Both sent Close.
    Closed,
}

/// A control frame waiting for the writer.
#[derive(Debug)]
enum Control {
    Pong(Vec<u8>),
    Close(CloseFrame),
}

/// What the two halves share.
#[derive(Debug)]
struct Shared {
    close: AtomicU8,
    queue: Mutex<VecDeque<Control>>,
    ready: Notify,
    pings_in_flight: AtomicU32,
    queue_cap: usize,
}

impl Shared {
    fn state(&self) -> CloseState {
        match self.close.load(Ordering::Acquire) {
            0 => CloseState::Open,
            CLOSE_SENT => CloseState::ClosedLocally,
            CLOSE_RECEIVED => CloseState::ClosedByPeer,
            _ => CloseState::Closed,
        }
    }

    /// Queues a control frame; a Pong is dropped when the queue is full, a Close never is.
    fn push(&self, c: Control) {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if matches!(c, Control::Pong(_)) && q.len() >= self.queue_cap {
            return;
        }
        q.push_back(c);
        drop(q);
        self.ready.notify_one();
    }

    fn pop(&self) -> Option<Control> {
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front()
    }

    fn has_queued(&self) -> bool {
        !self
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }
}

/// Splits an upgraded socket into its reading and writing halves.
pub fn split<IO: AsyncRead + AsyncWrite + Unpin>(
    io: IO,
    config: Config,
) -> (Reader<ReadHalf<IO>>, Writer<WriteHalf<IO>>) {
    let (r, w) = tokio::io::split(io);
    from_halves(r, w, config)
}

/// An endpoint over separate read and write halves (a split TCP stream, say).
pub fn from_halves<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    r: R,
    w: W,
    config: Config,
) -> (Reader<R>, Writer<W>) {
    let shared = Arc::new(Shared {
        close: AtomicU8::new(0),
        queue: Mutex::new(VecDeque::new()),
        ready: Notify::new(),
        pings_in_flight: AtomicU32::new(0),
        queue_cap: config.control_queue.max(1),
    });
    let capacity = config
        .read_buffer
        .max(config.max_message + frame::MAX_HEADER_LEN);
    let reader = Reader {
        frames: FrameReader::new(r, config.role.reads_from(), capacity),
        shared: shared.clone(),
        close_reply: config.close_reply,
        assembler: Assembler::new(config.max_message),
        in_message: false,
    };
    let rng = match config.role {
        Role::Client => Some(SmallRng::from_rng(&mut rand::rng())),
        Role::Server => None,
    };
    let writer = Writer {
        io: w,
        shared,
        rng,
        write_timeout: config.write_timeout,
    };
    (reader, writer)
}

/// One step of the streaming read API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A data frame; read its payload with [`Reader::data_chunk`] before the next item.
    Data(FrameHeader),
    /// A Ping (its Pong is already queued).
    Ping,
    /// A Pong.
    Pong,
    /// The peer's Close (queued back when the endpoint echoes closes).
    Close(CloseFrame),
}

/// The reading half.
#[derive(Debug)]
pub struct Reader<R> {
    frames: FrameReader<R>,
    shared: Arc<Shared>,
    close_reply: CloseReply,
    assembler: Assembler,
    /// Inside a fragmented message (streaming API): only continuations may follow.
    in_message: bool,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    /// The next frame; `None` at a clean end of the stream between frames. Data frames out of
    /// sequence (a continuation without a message, a new message inside one) are errors.
    pub async fn next_item(&mut self) -> Result<Option<Item>, ReadError> {
        let Some(h) = self.frames.header().await? else {
            return Ok(None);
        };
        match h.opcode {
            OpCode::Continuation | OpCode::Text | OpCode::Binary => {
                if (h.opcode == OpCode::Continuation) != self.in_message {
                    return Err(ReadError::OutOfSequence);
                }
                self.in_message = !h.fin;
                Ok(Some(Item::Data(h)))
            }
            _ => {
                let payload = self.frames.payload(&h).await?;
                Ok(Some(match self.control(h.opcode, payload)? {
                    Received::Ping => Item::Ping,
                    Received::Pong => Item::Pong,
                    Received::Close(c) => Item::Close(c),
                }))
            }
        }
    }

    /// The next piece of a data frame's payload, unmasked; `done` counts the bytes read of
    /// this frame so far. Call until `done == header.payload_len`.
    pub async fn data_chunk(
        &mut self,
        header: &FrameHeader,
        done: &mut u64,
    ) -> Result<&mut [u8], ReadError> {
        let range = self.raw_chunk(header, done).await?;
        Ok(&mut self.frames.buf_mut()[range])
    }

    /// Like [`Reader::data_chunk`], as a range of [`Reader::buf_mut`] with at least
    /// [`HEADROOM`] writable bytes before it (for writing a header in place).
    pub(crate) async fn raw_chunk(
        &mut self,
        header: &FrameHeader,
        done: &mut u64,
    ) -> Result<Range<usize>, ReadError> {
        let range = self.frames.chunk(header.payload_len - *done).await?;
        if let Some(mask) = header.mask {
            frame::apply_mask(&mut self.frames.buf_mut()[range.clone()], mask, *done);
        }
        *done += range.len() as u64;
        Ok(range)
    }

    pub(crate) fn buf_mut(&mut self) -> &mut [u8] {
        self.frames.buf_mut()
    }

    /// The next whole message (data messages up to [`Config::max_message`] bytes, and each
    /// control frame); `None` at a clean end. Cancel-safe.
    pub async fn next_message(&mut self) -> Result<Option<Message>, ReadError> {
        loop {
            while let Some((h, range)) = self.frames.try_frame()? {
                let data = &self.frames.buf[range];
                if h.opcode.is_control() {
                    let payload = data.to_vec();
                    return Ok(Some(match self.control(h.opcode, payload)? {
                        Received::Ping => Message::Ping,
                        Received::Pong => Message::Pong,
                        Received::Close(c) => Message::Close(c),
                    }));
                }
                if let Some(m) = self.assembler.add(&h, data)? {
                    return Ok(Some(m));
                }
            }
            if self.frames.fill(!self.assembler.in_progress()).await? == 0 {
                let clean = self.frames.buffered().is_empty() && !self.assembler.in_progress();
                return if clean {
                    Ok(None)
                } else {
                    Err(ReadError::UnexpectedEof)
                };
            }
        }
    }

    /// Applies the control-frame policy to a Ping, Pong or Close just read.
    fn control(&mut self, opcode: OpCode, payload: Vec<u8>) -> Result<Received, ReadError> {
        match opcode {
            OpCode::Ping => {
                if self.shared.close.load(Ordering::Acquire) & CLOSE_SENT == 0 {
                    self.shared.push(Control::Pong(payload));
                }
                Ok(Received::Ping)
            }
            OpCode::Pong => {
                let _ = self.shared.pings_in_flight.fetch_update(
                    Ordering::AcqRel,
                    Ordering::Acquire,
                    |n| n.checked_sub(1),
                );
                Ok(Received::Pong)
            }
            _ => {
                let close = CloseFrame::parse(&payload)?;
                let before = self.shared.close.fetch_or(CLOSE_RECEIVED, Ordering::AcqRel);
                if self.close_reply == CloseReply::Echo && before & CLOSE_SENT == 0 {
                    self.shared.push(Control::Close(close.clone()));
                }
                Ok(Received::Close(close))
            }
        }
    }

    /// Where the closing handshake is.
    pub fn close_state(&self) -> CloseState {
        self.shared.state()
    }
}

/// A control frame as the reader saw it.
enum Received {
    Ping,
    Pong,
    Close(CloseFrame),
}

/// The writing half.
#[derive(Debug)]
pub struct Writer<W> {
    io: W,
    shared: Arc<Shared>,
    /// The masking source of a client endpoint; `None` for a server.
    rng: Option<SmallRng>,
    write_timeout: Option<Duration>,
}

/// Why a write was refused or failed.
fn closed_error() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::BrokenPipe,
        "a Close was already sent on this WebSocket",
    )
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    /// Sends one whole frame (FIN set).
    pub async fn send(&mut self, opcode: OpCode, payload: &[u8]) -> std::io::Result<()> {
        self.send_fragment(true, opcode, payload).await
    }

    /// Sends one frame of a message: `opcode` is the message's on the first fragment and
    /// `Continuation` after it; `fin` on the last.
    pub async fn send_fragment(
        &mut self,
        fin: bool,
        opcode: OpCode,
        payload: &[u8],
    ) -> std::io::Result<()> {
        if self.close_sent() && !opcode.is_control() {
            return Err(closed_error());
        }
        let mask = self.next_mask();
        let header = FrameHeader {
            fin,
            opcode,
            mask,
            payload_len: payload.len() as u64,
        };
        let mut head = [0u8; frame::MAX_HEADER_LEN];
        let n = header.encode(&mut head);
        // One buffer per call, freed at once: nothing stays allocated on an idle connection,
        // and no buffer lives in the future's state while the write waits.
        let mut out = Vec::with_capacity(n + payload.len());
        out.extend_from_slice(&head[..n]);
        out.extend_from_slice(payload);
        if let Some(mask) = mask {
            frame::apply_mask(&mut out[n..], mask, 0);
        }
        self.write_bytes(&out).await
    }

    /// Sends `buf[HEADROOM..]` as one whole frame, writing its header into the headroom and
    /// masking in place, with a single write (the bridges' hot path).
    pub async fn send_in_place(&mut self, opcode: OpCode, buf: &mut [u8]) -> std::io::Result<()> {
        if self.close_sent() {
            return Err(closed_error());
        }
        let len = buf.len() - HEADROOM;
        let mask = self.next_mask();
        let mut head = [0u8; frame::MAX_HEADER_LEN];
        let n = FrameHeader {
            fin: true,
            opcode,
            mask,
            payload_len: len as u64,
        }
        .encode(&mut head);
        if let Some(mask) = mask {
            frame::apply_mask(&mut buf[HEADROOM..], mask, 0);
        }
        buf[HEADROOM - n..HEADROOM].copy_from_slice(&head[..n]);
        self.write_bytes(&buf[HEADROOM - n..]).await
    }

    /// Writes `bytes` (already framed) and flushes, within the write deadline.
    async fn write_bytes(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.write_raw(bytes, true).await
    }

    /// Writes `bytes` (part of a frame) and, with `flush`, flushes; within the write deadline.
    async fn write_raw(&mut self, bytes: &[u8], flush: bool) -> std::io::Result<()> {
        let io = &mut self.io;
        let write = async {
            if !bytes.is_empty() {
                io.write_all(bytes).await?;
            }
            if flush {
                io.flush().await?;
            }
            Ok(())
        };
        match self.write_timeout {
            None => write.await,
            // Boxed: the timer lives on the heap during the write only, not in the state of
            // every future that writes.
            Some(limit) => Box::pin(tokio::time::timeout(limit, write))
                .await
                .unwrap_or_else(|_| {
                    Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!(
                            "the peer did not take a write within {} s",
                            limit.as_secs_f32()
                        ),
                    ))
                }),
        }
    }

    fn next_mask(&mut self) -> Option<[u8; 4]> {
        self.rng.as_mut().map(|r| r.random())
    }

    /// Sends a Ping and counts it until a Pong comes back.
    pub async fn ping(&mut self, payload: &[u8]) -> std::io::Result<()> {
        self.send(OpCode::Ping, payload).await?;
        self.shared.pings_in_flight.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Pings sent and not answered yet (any Pong answers the oldest).
    pub fn pings_unanswered(&self) -> u32 {
        self.shared.pings_in_flight.load(Ordering::Acquire)
    }

    /// Sends a Close (once; later calls do nothing). Queued Pongs are dropped.
    pub async fn close(&mut self, close: &CloseFrame) -> std::io::Result<()> {
        let before = self.shared.close.fetch_or(CLOSE_SENT, Ordering::AcqRel);
        if before & CLOSE_SENT != 0 {
            return Ok(());
        }
        self.shared
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.send_fragment(true, OpCode::Close, &close.payload())
            .await
    }

    /// A future that completes when a control frame is queued for this writer. It holds no
    /// borrow of the writer (so a `select!` arm can flush with it), and is cancel-safe.
    pub fn control_ready(&self) -> impl Future<Output = ()> + Send + 'static {
        let shared = self.shared.clone();
        async move {
            loop {
                let notified = shared.ready.notified();
                if shared.has_queued() {
                    return;
                }
                notified.await;
            }
        }
    }

    /// A handle that queues a Close for this writer from elsewhere (the relay's shutdown
    /// reaches both writers of a tunnel this way); the writer's owner sends it when it next
    /// serves its control queue.
    pub fn control_handle(&self) -> ControlHandle {
        ControlHandle {
            shared: self.shared.clone(),
        }
    }

    /// Writes every queued control frame.
    pub async fn flush_control(&mut self) -> std::io::Result<()> {
        while let Some(c) = self.shared.pop() {
            match c {
                Control::Pong(p) if !self.close_sent() => self.send(OpCode::Pong, &p).await?,
                Control::Pong(_) => {}
                Control::Close(frame) => self.close(&frame).await?,
            }
        }
        Ok(())
    }

    /// Whether we sent a Close.
    pub fn close_sent(&self) -> bool {
        self.shared.close.load(Ordering::Acquire) & CLOSE_SENT != 0
    }

    /// Where the closing handshake is.
    pub fn close_state(&self) -> CloseState {
        self.shared.state()
    }

    /// Shuts the socket's write side (after the closing handshake), within a second.
    pub async fn shutdown(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.io.shutdown()).await;
    }

    /// The socket half.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.io
    }
}

/// Queues control frames for a [`Writer`] without owning it.
#[derive(Debug, Clone)]
pub struct ControlHandle {
    shared: Arc<Shared>,
}

impl ControlHandle {
    /// Queues `close` for the writer (sent once, when the writer serves its queue).
    pub fn queue_close(&self, close: CloseFrame) {
        self.shared.push(Control::Close(close));
    }
}

/// Copies one data frame from `reader` to `writer` as it arrives: the header is rewritten for
/// the writer's role in front of the first chunk and each chunk is written with one call, so
/// memory stays at one read buffer whatever the frame size. Opcode and FIN are kept, so
/// message boundaries survive. When `discard` is set (the destination was sent a Close) the
/// payload is read and dropped. Returns the payload length.
pub async fn forward_data<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    reader: &mut Reader<R>,
    header: &FrameHeader,
    writer: &mut Writer<W>,
) -> Result<u64, ForwardError> {
    let discard = writer.close_sent();
    let mask = writer.next_mask();
    let mut head = [0u8; frame::MAX_HEADER_LEN];
    let head_len = FrameHeader {
        fin: header.fin,
        opcode: header.opcode,
        mask,
        payload_len: header.payload_len,
    }
    .encode(&mut head);
    let mut done = 0u64;
    loop {
        let offset = done;
        let range = reader
            .raw_chunk(header, &mut done)
            .await
            .map_err(ForwardError::Read)?;
        let buf = reader.buf_mut();
        if let Some(mask) = mask {
            frame::apply_mask(&mut buf[range.clone()], mask, offset);
        }
        let start = if offset == 0 {
            buf[range.start - head_len..range.start].copy_from_slice(&head[..head_len]);
            range.start - head_len
        } else {
            range.start
        };
        if !discard {
            writer
                .write_raw(&buf[start..range.end], false)
                .await
                .map_err(ForwardError::Write)?;
        }
        if done == header.payload_len {
            break;
        }
    }
    if !discard {
        writer
            .write_raw(&[], true)
            .await
            .map_err(ForwardError::Write)?;
    }
    Ok(header.payload_len)
}

/// Which side failed while forwarding.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// Reading the source failed.
    #[error("{0}")]
    Read(ReadError),
    /// Writing the destination failed.
    #[error("write failed: {0}")]
    Write(std::io::Error),
}
