//! WebSocket frame I/O over tokio (RFC 6455 §5), on top of `hc_protocol::frame`; shared by
//! the relay (reading clients' masked frames) and the client side (reading the relay's
//! unmasked frames).
//!
//! [`FrameReader`] is cancel-safe (all state lives in the struct, reads go through a buffer
//! that keeps what arrived) and holds no heap buffer while it waits at a frame boundary: the
//! wait uses a small stack array, and the buffer is allocated when bytes arrive. Its buffer
//! keeps [`HEADROOM`] bytes free in front of any payload so an outgoing frame header can be
//! written in place before a chunk and the chunk forwarded with one write.

use std::ops::Range;

use hc_protocol::frame::{self, CloseFrame, FrameError, FrameHeader, OpCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes kept free in front of buffered data (an outgoing header is at most 14 bytes).
pub const HEADROOM: usize = 16;
/// Size of the stack buffer used while waiting for the next frame.
const IDLE_READ: usize = 256;

/// Whose frames a reader reads: a client's are masked, a server's are not (RFC 6455 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// Reading a client's frames (on the relay): every frame must be masked.
    Client,
    /// Reading a server's frames (on a client): no frame may be masked.
    Server,
}

impl Peer {
    fn check(self, h: &FrameHeader) -> Result<(), ReadError> {
        match (self, h.mask.is_some()) {
            (Peer::Client, false) => Err(ReadError::Unmasked),
            (Peer::Server, true) => Err(ReadError::Masked),
            _ => Ok(()),
        }
    }
}

/// A read that could not produce a frame.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The socket failed.
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
    /// The peer closed TCP in the middle of a frame.
    #[error("connection closed in the middle of a frame")]
    UnexpectedEof,
    /// The peer broke the framing rules.
    #[error("{0}")]
    Protocol(#[from] FrameError),
    /// A frame that must be read whole does not fit the limit.
    #[error("message is larger than {0} bytes")]
    TooLarge(usize),
    /// A client frame without a mask.
    #[error("client frame is not masked")]
    Unmasked,
    /// A server frame with a mask.
    #[error("server frame is masked")]
    Masked,
    /// A continuation without a message, or a new message inside a fragmented one.
    #[error("data frame out of sequence")]
    OutOfSequence,
    /// A text message that is not UTF-8.
    #[error("text message is not valid UTF-8")]
    InvalidUtf8,
}

/// Buffered frame reader over one socket half.
#[derive(Debug)]
pub struct FrameReader<R> {
    io: R,
    from: Peer,
    buf: Vec<u8>,
    pos: usize,
    len: usize,
    capacity: usize,
    /// The last read filled the buffer, so more data is probably waiting: keep the buffer
    /// across frame boundaries instead of freeing it (bulk transfers would otherwise pay an
    /// extra read and a fresh allocation per frame).
    busy: bool,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader of `from`'s frames whose buffer holds up to `capacity` bytes once allocated.
    pub fn new(io: R, from: Peer, capacity: usize) -> Self {
        FrameReader {
            io,
            from,
            buf: Vec::new(),
            pos: HEADROOM,
            len: HEADROOM,
            capacity: capacity.max(frame::MAX_HEADER_LEN * 2),
            busy: false,
        }
    }

    /// The socket half it reads from.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.io
    }

    fn buffered(&self) -> &[u8] {
        self.buf.get(self.pos..self.len).unwrap_or_default()
    }

    fn allocate(&mut self) {
        self.buf = vec![0; HEADROOM + self.capacity];
    }

    /// Reads more bytes and returns how many (0 at EOF). With `lean`, an empty buffer is freed
    /// first and the wait happens on a small stack array.
    async fn fill(&mut self, lean: bool) -> std::io::Result<usize> {
        if self.pos == self.len {
            (self.pos, self.len) = (HEADROOM, HEADROOM);
            if lean && !self.busy {
                self.buf = Vec::new();
            }
        }
        if self.buf.is_empty() {
            if lean {
                let mut small = [0u8; IDLE_READ];
                let n = self.io.read(&mut small[..IDLE_READ.min(self.capacity)]).await?;
                if n > 0 {
                    self.allocate();
                    self.buf[HEADROOM..HEADROOM + n].copy_from_slice(&small[..n]);
                    self.len = HEADROOM + n;
                }
                return Ok(n);
            }
            self.allocate();
        }
        if self.len == self.buf.len() && self.pos > HEADROOM {
            self.buf.copy_within(self.pos..self.len, HEADROOM);
            self.len -= self.pos - HEADROOM;
            self.pos = HEADROOM;
        }
        if self.len == self.buf.len() {
            return Err(std::io::Error::other("frame reader buffer is full"));
        }
        let n = self.io.read(&mut self.buf[self.len..]).await?;
        self.len += n;
        self.busy = self.len == self.buf.len();
        Ok(n)
    }

    /// The next frame header; `None` at a clean EOF between frames.
    pub async fn header(&mut self) -> Result<Option<FrameHeader>, ReadError> {
        loop {
            if let Some((h, n)) = FrameHeader::decode(self.buffered())? {
                self.from.check(&h)?;
                self.pos += n;
                return Ok(Some(h));
            }
            if self.fill(true).await? == 0 {
                return if self.buffered().is_empty() { Ok(None) } else { Err(ReadError::UnexpectedEof) };
            }
        }
    }

    /// The next piece of payload, at most `remaining` bytes, as a range of [`Self::buf_mut`].
    /// At least [`HEADROOM`] bytes before the range may be overwritten.
    pub async fn chunk(&mut self, remaining: u64) -> Result<Range<usize>, ReadError> {
        if remaining == 0 {
            return Ok(self.pos..self.pos);
        }
        if self.buffered().is_empty() && self.fill(false).await? == 0 {
            return Err(ReadError::UnexpectedEof);
        }
        let take = self.buffered().len().min(usize::try_from(remaining).unwrap_or(usize::MAX));
        let start = self.pos;
        self.pos += take;
        Ok(start..start + take)
    }

    /// The buffer the ranges of [`Self::chunk`] point into.
    pub fn buf_mut(&mut self) -> &mut [u8] {
        &mut self.buf
    }

    /// Reads a whole small payload (a control frame) and unmasks it.
    pub async fn payload(&mut self, header: &FrameHeader) -> Result<Vec<u8>, ReadError> {
        let mut out = Vec::with_capacity(header.payload_len as usize);
        while (out.len() as u64) < header.payload_len {
            let range = self.chunk(header.payload_len - out.len() as u64).await?;
            out.extend_from_slice(&self.buf[range]);
        }
        if let Some(mask) = header.mask {
            frame::apply_mask(&mut out, mask, 0);
        }
        Ok(out)
    }

    /// A whole frame if one is buffered (cancel-safe building block for messages). Frames
    /// longer than the buffer are refused.
    fn try_frame(&mut self) -> Result<Option<(FrameHeader, Range<usize>)>, ReadError> {
        let Some((h, n)) = FrameHeader::decode(self.buffered())? else { return Ok(None) };
        let max = self.capacity - frame::MAX_HEADER_LEN;
        if h.payload_len > max as u64 {
            return Err(ReadError::TooLarge(max));
        }
        self.from.check(&h)?;
        let total = n + h.payload_len as usize;
        if self.buffered().len() < total {
            return Ok(None);
        }
        let range = self.pos + n..self.pos + total;
        self.pos += total;
        if let Some(mask) = h.mask {
            frame::apply_mask(&mut self.buf[range.clone()], mask, 0);
        }
        Ok(Some((h, range)))
    }
}

/// A whole message on a control channel.
#[derive(Debug, PartialEq, Eq)]
pub enum Message {
    /// A text message.
    Text(String),
    /// A binary message.
    Binary(Vec<u8>),
    /// A ping with its payload.
    Ping(Vec<u8>),
    /// A pong.
    Pong,
    /// A close frame.
    Close(CloseFrame),
}

/// Reassembles messages of at most `max` bytes; cancel-safe.
#[derive(Debug)]
pub struct MessageReader<R> {
    frames: FrameReader<R>,
    partial: Option<(OpCode, Vec<u8>)>,
    max: usize,
}

impl<R: AsyncRead + Unpin> MessageReader<R> {
    /// A reader of `from`'s messages up to `max` bytes.
    pub fn new(io: R, from: Peer, max: usize) -> Self {
        MessageReader { frames: FrameReader::new(io, from, max + frame::MAX_HEADER_LEN), partial: None, max }
    }

    /// The next message; `Ok(None)` at EOF.
    pub async fn next(&mut self) -> Result<Option<Message>, ReadError> {
        loop {
            while let Some((h, range)) = self.frames.try_frame()? {
                if let Some(m) = self.assemble(h, range)? {
                    return Ok(Some(m));
                }
            }
            if self.frames.fill(self.partial.is_none()).await? == 0 {
                return if self.frames.buffered().is_empty() && self.partial.is_none() { Ok(None) } else { Err(ReadError::UnexpectedEof) };
            }
        }
    }

    fn assemble(&mut self, h: FrameHeader, range: Range<usize>) -> Result<Option<Message>, ReadError> {
        let data = &self.frames.buf[range];
        let message_op = match (h.opcode, &mut self.partial) {
            (OpCode::Ping, _) => return Ok(Some(Message::Ping(data.to_vec()))),
            (OpCode::Pong, _) => return Ok(Some(Message::Pong)),
            (OpCode::Close, _) => return Ok(Some(Message::Close(CloseFrame::parse(data)?))),
            (OpCode::Continuation, Some((op, acc))) => {
                if acc.len() + data.len() > self.max {
                    return Err(ReadError::TooLarge(self.max));
                }
                acc.extend_from_slice(data);
                *op
            }
            (OpCode::Text | OpCode::Binary, None) => {
                self.partial = Some((h.opcode, data.to_vec()));
                h.opcode
            }
            _ => return Err(ReadError::OutOfSequence),
        };
        if !h.fin {
            return Ok(None);
        }
        let (_, bytes) = self.partial.take().unwrap_or((message_op, Vec::new()));
        Ok(Some(match message_op {
            OpCode::Text => Message::Text(String::from_utf8(bytes).map_err(|_| ReadError::InvalidUtf8)?),
            _ => Message::Binary(bytes),
        }))
    }
}

/// Writes one whole unmasked frame (server to client) and flushes.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, opcode: OpCode, payload: &[u8]) -> std::io::Result<()> {
    w.write_all(&frame::encode_frame(opcode, payload)).await?;
    w.flush().await
}

/// Writes a close frame (server to client) and flushes.
pub async fn write_close<W: AsyncWrite + Unpin>(w: &mut W, close: &CloseFrame) -> std::io::Result<()> {
    write_frame(w, OpCode::Close, &close.payload()).await
}

/// Writes one whole frame masked with `mask` (client to server) and flushes.
pub async fn write_masked<W: AsyncWrite + Unpin>(w: &mut W, opcode: OpCode, payload: &[u8], mask: [u8; 4]) -> std::io::Result<()> {
    let header = FrameHeader { fin: true, opcode, mask: Some(mask), payload_len: payload.len() as u64 };
    let mut head = [0u8; frame::MAX_HEADER_LEN];
    let n = header.encode(&mut head);
    let mut out = Vec::with_capacity(n + payload.len());
    out.extend_from_slice(&head[..n]);
    out.extend_from_slice(payload);
    frame::apply_mask(&mut out[n..], mask, 0);
    w.write_all(&out).await?;
    w.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut h = [0u8; frame::MAX_HEADER_LEN];
        let op = match opcode {
            0 => OpCode::Continuation,
            1 => OpCode::Text,
            2 => OpCode::Binary,
            8 => OpCode::Close,
            _ => OpCode::Ping,
        };
        let n = FrameHeader { fin, opcode: op, mask: Some(mask), payload_len: payload.len() as u64 }.encode(&mut h);
        let mut body = payload.to_vec();
        frame::apply_mask(&mut body, mask, 0);
        [&h[..n], &body[..]].concat()
    }

    #[tokio::test]
    async fn messages_are_reassembled_with_interleaved_control_frames() {
        let mut wire = masked(1, false, b"hel");
        wire.extend(masked(9, true, b"p"));
        wire.extend(masked(0, true, b"lo"));
        wire.extend(masked(8, true, &CloseFrame::new(1000, "bye").payload()));
        let mut r = MessageReader::new(&wire[..], Peer::Client, 64);
        assert_eq!(r.next().await.unwrap(), Some(Message::Ping(b"p".to_vec())));
        assert_eq!(r.next().await.unwrap(), Some(Message::Text("hello".into())));
        assert_eq!(r.next().await.unwrap(), Some(Message::Close(CloseFrame::new(1000, "bye"))));
        assert_eq!(r.next().await.unwrap(), None);
    }

    #[tokio::test]
    async fn oversize_and_unmasked_messages_are_refused() {
        let wire = masked(2, true, &[0u8; 100]);
        assert!(matches!(MessageReader::new(&wire[..], Peer::Client, 64).next().await, Err(ReadError::TooLarge(_))));
        let mut wire = masked(1, false, &[b'a'; 40]);
        wire.extend(masked(0, true, &[b'a'; 40]));
        assert!(matches!(MessageReader::new(&wire[..], Peer::Client, 64).next().await, Err(ReadError::TooLarge(64))));
        let unmasked = frame::encode_frame(OpCode::Text, b"x");
        assert!(matches!(MessageReader::new(&unmasked[..], Peer::Client, 64).next().await, Err(ReadError::Unmasked)));
        let truncated = &masked(1, true, b"hello")[..5];
        assert!(matches!(MessageReader::new(truncated, Peer::Client, 64).next().await, Err(ReadError::UnexpectedEof)));
        let masked_from_server = masked(1, true, b"x");
        assert!(matches!(MessageReader::new(&masked_from_server[..], Peer::Server, 64).next().await, Err(ReadError::Masked)));
        let unmasked = frame::encode_frame(OpCode::Text, b"ok");
        assert_eq!(MessageReader::new(&unmasked[..], Peer::Server, 64).next().await.unwrap(), Some(Message::Text("ok".into())));
    }

    #[tokio::test]
    async fn streaming_chunks_keep_headroom() {
        let payload: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let wire = masked(2, true, &payload);
        let mut r = FrameReader::new(&wire[..], Peer::Client, 4096);
        let h = r.header().await.unwrap().unwrap();
        let mut got = Vec::new();
        while (got.len() as u64) < h.payload_len {
            let range = r.chunk(h.payload_len - got.len() as u64).await.unwrap();
            assert!(range.start >= HEADROOM && range.len() <= 4096);
            let offset = got.len() as u64;
            let buf = r.buf_mut();
            frame::apply_mask(&mut buf[range.clone()], h.mask.unwrap(), offset);
            got.extend_from_slice(&buf[range]);
        }
        assert_eq!(got, payload);
        assert!(r.header().await.unwrap().is_none());
    }
}
