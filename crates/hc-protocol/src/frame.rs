//! WebSocket framing (RFC 6455 §5), sans I/O.
//!
//! The relay forwards frames one by one instead of whole messages, so message boundaries and
//! opcodes survive, memory stays bounded whatever the message size, and a Close from one side
//! can be forwarded without answering it at once (half-close, PROTOCOL.md §6.4). Ready-made
//! WebSocket libraries echo a Close immediately, which ends the other direction too.
//!
//! Frame header on the wire:
//! ```text
//! byte 0: FIN | RSV1 | RSV2 | RSV3 | opcode(4)
//! byte 1: MASK | len7            len7 = 126 -> u16 length follows, 127 -> u64 length follows
//! [extended length] [4-byte mask key if MASK]
//! ```

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha1::{Digest, Sha1};

/// Longest possible frame header: 2 + 8 (length) + 4 (mask).
pub const MAX_HEADER_LEN: usize = 14;
/// Control frames carry at most 125 payload bytes.
pub const MAX_CONTROL_PAYLOAD: usize = 125;
/// GUID appended to `Sec-WebSocket-Key` before hashing (RFC 6455 §1.3).
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Frame opcodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    /// Continues a fragmented message.
    Continuation,
    /// First frame of a text message.
    Text,
    /// First frame of a binary message.
    Binary,
    /// Close, with optional code and reason.
    Close,
    /// Ping, answered by a Pong with the same payload.
    Ping,
    /// Pong.
    Pong,
}

impl OpCode {
    fn from_bits(bits: u8) -> Option<OpCode> {
        Some(match bits {
            0 => OpCode::Continuation,
            1 => OpCode::Text,
            2 => OpCode::Binary,
            8 => OpCode::Close,
            9 => OpCode::Ping,
            10 => OpCode::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            OpCode::Continuation => 0,
            OpCode::Text => 1,
            OpCode::Binary => 2,
            OpCode::Close => 8,
            OpCode::Ping => 9,
            OpCode::Pong => 10,
        }
    }

    /// Close, Ping and Pong are control frames.
    pub fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Last frame of its message.
    pub fin: bool,
    /// Frame type.
    pub opcode: OpCode,
    /// Masking key (frames from clients always have one).
    pub mask: Option<[u8; 4]>,
    /// Payload length in bytes.
    pub payload_len: u64,
}

/// A frame the codec refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// RSV bits set, but no extension was negotiated (we never negotiate one).
    #[error("frame has reserved bits set but no extension was negotiated")]
    ReservedBits,
    /// Opcode 3-7 or 11-15.
    #[error("frame has unknown opcode {0}")]
    UnknownOpcode(u8),
    /// Control frame over 125 bytes or without FIN.
    #[error("control frame is fragmented or longer than 125 bytes")]
    BadControlFrame,
    /// 64-bit length with the top bit set.
    #[error("frame length is out of range")]
    LengthOutOfRange,
    /// Close payload of one byte, a reserved code, or a reason that is not UTF-8.
    #[error("close frame payload is invalid")]
    BadClosePayload,
}

impl FrameHeader {
    /// A header for a frame the relay sends (servers never mask).
    pub fn new(fin: bool, opcode: OpCode, payload_len: u64) -> Self {
        FrameHeader {
            fin,
            opcode,
            mask: None,
            payload_len,
        }
    }

    /// Decodes a header from the start of `buf`. `Ok(None)` means more bytes are needed;
    /// `Ok(Some((header, n)))` means the header used `n` bytes.
    pub fn decode(buf: &[u8]) -> Result<Option<(FrameHeader, usize)>, FrameError> {
        let [b0, b1, ..] = *buf else { return Ok(None) };
        if b0 & 0x70 != 0 {
            return Err(FrameError::ReservedBits);
        }
        let opcode = OpCode::from_bits(b0 & 0x0f).ok_or(FrameError::UnknownOpcode(b0 & 0x0f))?;
        let fin = b0 & 0x80 != 0;
        let masked = b1 & 0x80 != 0;
        let (payload_len, mut used) = match b1 & 0x7f {
            126 => match buf.get(2..4) {
                Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
                None => return Ok(None),
            },
            127 => match buf.get(2..10) {
                Some(b) => (
                    u64::from_be_bytes(b.try_into().map_err(|_| FrameError::LengthOutOfRange)?),
                    10,
                ),
                None => return Ok(None),
            },
            n => (u64::from(n), 2),
        };
        if payload_len >> 63 != 0 {
            return Err(FrameError::LengthOutOfRange);
        }
        if opcode.is_control() && (!fin || payload_len > MAX_CONTROL_PAYLOAD as u64) {
            return Err(FrameError::BadControlFrame);
        }
        let mask = if masked {
            let Some(m) = buf.get(used..used + 4) else {
                return Ok(None);
            };
            used += 4;
            Some([m[0], m[1], m[2], m[3]])
        } else {
            None
        };
        Ok(Some((
            FrameHeader {
                fin,
                opcode,
                mask,
                payload_len,
            },
            used,
        )))
    }

    /// Encodes into `out`, returning the number of bytes written (2 to 14).
    pub fn encode(&self, out: &mut [u8; MAX_HEADER_LEN]) -> usize {
        out[0] = (u8::from(self.fin) << 7) | self.opcode.bits();
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        let mut n = match self.payload_len {
            len @ 0..=125 => {
                out[1] = mask_bit | len as u8;
                2
            }
            len @ 126..=0xffff => {
                out[1] = mask_bit | 126;
                out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
                4
            }
            len => {
                out[1] = mask_bit | 127;
                out[2..10].copy_from_slice(&len.to_be_bytes());
                10
            }
        };
        if let Some(m) = self.mask {
            out[n..n + 4].copy_from_slice(&m);
            n += 4;
        }
        n
    }

    /// Encoded length of this header.
    pub fn encoded_len(&self) -> usize {
        let len = match self.payload_len {
            0..=125 => 2,
            126..=0xffff => 4,
            _ => 10,
        };
        len + if self.mask.is_some() { 4 } else { 0 }
    }
}

/// XORs `data` with `mask`, where `data` starts `offset` bytes into the payload (so a payload
/// can be unmasked in pieces as it streams through).
pub fn apply_mask(data: &mut [u8], mask: [u8; 4], offset: u64) {
    let shift = (offset % 4) as usize;
    let rotated = [
        mask[shift],
        mask[(shift + 1) % 4],
        mask[(shift + 2) % 4],
        mask[(shift + 3) % 4],
    ];
    let word = u64::from_ne_bytes([
        rotated[0], rotated[1], rotated[2], rotated[3], rotated[0], rotated[1], rotated[2],
        rotated[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ word).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= rotated[i % 4];
    }
}

/// WebSocket close codes the relay uses or checks (RFC 6455 §7.4, PROTOCOL.md §5.5, §6.4).
pub mod close_code {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// Going away: hybrid connection deleted or disabled, relay shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// Protocol error.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// No status code present (never sent on the wire).
    pub const NO_STATUS: u16 = 1005;
    /// Invalid payload data: a text message that is not UTF-8 (RFC 6455 §8.1).
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Policy violation: token expired or renewal invalid.
    pub const POLICY_VIOLATION: u16 = 1008;
    /// Message too big.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// Internal error.
    pub const INTERNAL_ERROR: u16 = 1011;
}

/// A close frame's payload: no code at all, or a code and a UTF-8 reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFrame {
    /// Close code; `None` for an empty payload.
    pub code: Option<u16>,
    /// Reason text (may be empty).
    pub reason: String,
}

impl CloseFrame {
    /// A close with a code and reason; the reason is cut at a character boundary to fit 123
    /// bytes.
    pub fn new(code: u16, reason: &str) -> Self {
        let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        CloseFrame {
            code: Some(code),
            reason: reason[..end].to_owned(),
        }
    }

    /// Parses an (unmasked) close payload, checking the code is one an endpoint may send.
    pub fn parse(payload: &[u8]) -> Result<Self, FrameError> {
        match payload {
            [] => Ok(CloseFrame {
                code: None,
                reason: String::new(),
            }),
            [_] => Err(FrameError::BadClosePayload),
            [a, b, reason @ ..] => {
                let code = u16::from_be_bytes([*a, *b]);
                let valid = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
                let reason =
                    std::str::from_utf8(reason).map_err(|_| FrameError::BadClosePayload)?;
                if valid {
                    Ok(CloseFrame {
                        code: Some(code),
                        reason: reason.to_owned(),
                    })
                } else {
                    Err(FrameError::BadClosePayload)
                }
            }
        }
    }

    /// The payload bytes.
    pub fn payload(&self) -> Vec<u8> {
        match self.code {
            None => Vec::new(),
            Some(code) => {
                let mut p = code.to_be_bytes().to_vec();
                p.extend_from_slice(self.reason.as_bytes());
                p
            }
        }
    }
}

/// A whole unmasked frame as bytes (header + payload), for small frames the relay writes.
pub fn encode_frame(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let header = FrameHeader::new(true, opcode, payload.len() as u64);
    let mut head = [0u8; MAX_HEADER_LEN];
    let n = header.encode(&mut head);
    let mut out = Vec::with_capacity(n + payload.len());
    out.extend_from_slice(&head[..n]);
    out.extend_from_slice(payload);
    out
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key` (RFC 6455 §4.2.2).
pub fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.trim().as_bytes());
    sha.update(ACCEPT_GUID.as_bytes());
    BASE64.encode(sha.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc_accept_key() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn rfc_examples() {
        // RFC 6455 §5.7: masked "Hello".
        let frame = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let (h, n) = FrameHeader::decode(&frame).unwrap().unwrap();
        assert_eq!(
            (h.fin, h.opcode, h.payload_len, n),
            (true, OpCode::Text, 5, 6)
        );
        let mut payload = frame[n..].to_vec();
        apply_mask(&mut payload, h.mask.unwrap(), 0);
        assert_eq!(payload, b"Hello");
        // Fragmented unmasked text "Hel" + "lo".
        let (h, _) = FrameHeader::decode(&[0x01, 0x03]).unwrap().unwrap();
        assert!(!h.fin && h.opcode == OpCode::Text);
        // 256-byte and 64 KiB binary lengths.
        assert_eq!(
            FrameHeader::decode(&[0x82, 0x7E, 0x01, 0x00])
                .unwrap()
                .unwrap()
                .0
                .payload_len,
            256
        );
        assert_eq!(
            FrameHeader::decode(&[0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0])
                .unwrap()
                .unwrap()
                .0
                .payload_len,
            65536
        );
    }

    #[test]
    fn partial_headers_need_more() {
        assert_eq!(FrameHeader::decode(&[]), Ok(None));
        assert_eq!(FrameHeader::decode(&[0x82]), Ok(None));
        assert_eq!(FrameHeader::decode(&[0x82, 0xFE, 0x01]), Ok(None));
        assert_eq!(FrameHeader::decode(&[0x82, 0x85, 1, 2]), Ok(None));
    }

    #[test]
    fn refused_frames() {
        assert_eq!(
            FrameHeader::decode(&[0xC2, 0x00]),
            Err(FrameError::ReservedBits)
        );
        assert_eq!(
            FrameHeader::decode(&[0x83, 0x00]),
            Err(FrameError::UnknownOpcode(3))
        );
        assert_eq!(
            FrameHeader::decode(&[0x09, 0x00]),
            Err(FrameError::BadControlFrame)
        );
        assert_eq!(
            FrameHeader::decode(&[0x89, 0x7E, 0, 126]),
            Err(FrameError::BadControlFrame)
        );
        assert_eq!(
            FrameHeader::decode(&[0x82, 0x7F, 0x80, 0, 0, 0, 0, 0, 0, 0]),
            Err(FrameError::LengthOutOfRange)
        );
    }

    #[test]
    fn close_payloads() {
        let c = CloseFrame::new(1001, "bye");
        assert_eq!(CloseFrame::parse(&c.payload()).unwrap(), c);
        assert_eq!(CloseFrame::parse(&[]).unwrap().code, None);
        assert!(CloseFrame::parse(&[3]).is_err());
        assert!(CloseFrame::parse(&1005u16.to_be_bytes()).is_err());
        assert!(CloseFrame::parse(&[0x03, 0xe8, 0xff]).is_err());
        let long = CloseFrame::new(1000, &"é".repeat(100));
        assert!(long.payload().len() <= MAX_CONTROL_PAYLOAD);
    }

    proptest! {
        #[test]
        fn header_round_trip(fin: bool, op in 0usize..3, len in prop_oneof![0u64..200, 60_000u64..70_000, Just(u64::MAX >> 1)], mask: Option<[u8; 4]>) {
            let opcode = [OpCode::Continuation, OpCode::Text, OpCode::Binary][op];
            let h = FrameHeader { fin, opcode, mask, payload_len: len };
            let mut buf = [0u8; MAX_HEADER_LEN];
            let n = h.encode(&mut buf);
            prop_assert_eq!(n, h.encoded_len());
            prop_assert_eq!(FrameHeader::decode(&buf[..n]).unwrap(), Some((h, n)));
        }

        #[test]
        fn masking_in_pieces_equals_masking_at_once(data in proptest::collection::vec(any::<u8>(), 0..300), mask: [u8; 4], split in 0usize..300) {
            let split = split.min(data.len());
            let mut whole = data.clone();
            apply_mask(&mut whole, mask, 0);
            let mut pieces = data.clone();
            let (a, b) = pieces.split_at_mut(split);
            apply_mask(a, mask, 0);
            apply_mask(b, mask, split as u64);
            prop_assert_eq!(&whole, &pieces);
            let naive: Vec<u8> = data.iter().enumerate().map(|(i, x)| x ^ mask[i % 4]).collect();
            prop_assert_eq!(whole, naive);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..20)) {
            let _ = FrameHeader::decode(&bytes);
            let _ = CloseFrame::parse(&bytes);
        }
    }
}
