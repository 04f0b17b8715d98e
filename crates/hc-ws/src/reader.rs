//! The frame reader (RFC 6455 §5.2) over one socket half, on top of `hc_protocol::frame`.
//!
//! [`FrameReader`] is cancel-safe (all state lives in the struct, reads go through a buffer
//! that keeps what arrived) and holds no heap buffer while it waits at a frame boundary: the
//! wait uses a small stack array, and the buffer is allocated when bytes arrive. Its buffer
//! keeps [`HEADROOM`] bytes free in front of any payload so an outgoing frame header can be
//! written in place before a chunk and the chunk forwarded with one write.

use std::ops::Range;

use bytes::BufMut as _;
use hc_protocol::frame::{self, FrameError, FrameHeader};
use tokio::io::{AsyncRead, AsyncReadExt};

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
    pub(crate) buf: Vec<u8>,
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

    pub(crate) fn buffered(&self) -> &[u8] {
        self.buf.get(self.pos..self.len).unwrap_or_default()
    }

    /// The buffer's full size: headroom plus capacity.
    fn total(&self) -> usize {
        HEADROOM + self.capacity
    }

    /// Allocates the buffer without zeroing it: only the headroom is written; reads fill the
    /// rest through `read_buf` (`buf.len()` is always `len`). A zeroed 64 KiB buffer cost a
    /// 64 KiB memset per message on an idle-then-busy tunnel (issue 16's profile).
    fn allocate(&mut self) {
        let mut buf = Vec::with_capacity(self.total());
        buf.resize(HEADROOM, 0);
        self.buf = buf;
    }

    /// Reads more bytes and returns how many (0 at EOF). With `lean`, an empty buffer is freed
    /// first and the wait happens on a small stack array.
    pub(crate) async fn fill(&mut self, lean: bool) -> std::io::Result<usize> {
        if self.pos == self.len {
            (self.pos, self.len) = (HEADROOM, HEADROOM);
            if lean && !self.busy {
                self.buf = Vec::new();
            } else {
                self.buf.truncate(HEADROOM);
            }
        }
        if self.buf.is_empty() {
            if lean {
                let mut small = [0u8; IDLE_READ];
                let n = self
                    .io
                    .read(&mut small[..IDLE_READ.min(self.capacity)])
                    .await?;
                if n > 0 {
                    self.allocate();
                    self.buf.extend_from_slice(&small[..n]);
                    self.len = HEADROOM + n;
                }
                return Ok(n);
            }
            self.allocate();
        }
        if self.len == self.total() && self.pos > HEADROOM {
            self.buf.copy_within(self.pos..self.len, HEADROOM);
            self.len -= self.pos - HEADROOM;
            self.buf.truncate(self.len);
            self.pos = HEADROOM;
        }
        if self.len >= self.total() {
            return Err(std::io::Error::other("frame reader buffer is full"));
        }
        // At most up to the buffer's size (a Vec may have spare capacity beyond it).
        let room = self.total() - self.len;
        let n = self.io.read_buf(&mut (&mut self.buf).limit(room)).await?;
        self.len += n;
        debug_assert_eq!(self.len, self.buf.len());
        self.busy = self.len == self.total();
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
                return if self.buffered().is_empty() {
                    Ok(None)
                } else {
                    Err(ReadError::UnexpectedEof)
                };
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
        let take = self
            .buffered()
            .len()
            .min(usize::try_from(remaining).unwrap_or(usize::MAX));
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
    pub(crate) fn try_frame(&mut self) -> Result<Option<(FrameHeader, Range<usize>)>, ReadError> {
        let Some((h, n)) = FrameHeader::decode(self.buffered())? else {
            return Ok(None);
        };
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
