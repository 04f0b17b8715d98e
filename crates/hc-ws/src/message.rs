//! Whole messages (RFC 6455 §5.4): data frames reassembled up to a size limit, with control
//! frames allowed in between the fragments.

use hc_protocol::frame::{FrameHeader, OpCode};

use crate::reader::ReadError;

/// One message as [`crate::Reader::next_message`] returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message (valid UTF-8).
    Text(String),
    /// A binary message.
    Binary(Vec<u8>),
    /// A Ping arrived (its Pong is already queued).
    Ping,
    /// A Pong arrived.
    Pong,
    /// The peer's Close.
    Close(hc_protocol::frame::CloseFrame),
}

/// Collects the fragments of one data message.
#[derive(Debug)]
pub(crate) struct Assembler {
    max: usize,
    partial: Option<(OpCode, Vec<u8>)>,
}

impl Assembler {
    pub(crate) fn new(max: usize) -> Self {
        Assembler { max, partial: None }
    }

    /// Whether a message has begun and not ended.
    pub(crate) fn in_progress(&self) -> bool {
        self.partial.is_some()
    }

    /// Adds one data frame; the message once its last frame came.
    pub(crate) fn add(
        &mut self,
        h: &FrameHeader,
        data: &[u8],
    ) -> Result<Option<Message>, ReadError> {
        let op = match (h.opcode, &mut self.partial) {
            (OpCode::Continuation, Some((op, acc))) => {
                if acc.len() + data.len() > self.max {
                    return Err(ReadError::TooLarge(self.max));
                }
                acc.extend_from_slice(data);
                *op
            }
            (OpCode::Text | OpCode::Binary, None) => {
                if data.len() > self.max {
                    return Err(ReadError::TooLarge(self.max));
                }
                self.partial = Some((h.opcode, data.to_vec()));
                h.opcode
            }
            _ => return Err(ReadError::OutOfSequence),
        };
        if !h.fin {
            return Ok(None);
        }
        let (_, bytes) = self.partial.take().unwrap_or((op, Vec::new()));
        Ok(Some(match op {
            OpCode::Text => {
                Message::Text(String::from_utf8(bytes).map_err(|_| ReadError::InvalidUtf8)?)
            }
            _ => Message::Binary(bytes),
        }))
    }
}
