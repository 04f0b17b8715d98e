//! Everything between bytes and WebSocket messages (RFC 6455), over tokio, shared by the
//! relay and the client side: the frame reader ([`FrameReader`]), one endpoint
//! ([`endpoint`]: roles, the close state machine with half-close, the control-frame policy,
//! write deadlines, streaming and whole-message reads), and the clock deadlines use
//! ([`Clock`]). No handshake, no client or server logic: the relay depends on this crate and
//! never on client code.
//!
//! Neighbours: `hc-protocol` (the sans-I/O frame codec underneath); `relay-server` (pump,
//! control channel, HTTP mode) and `hc-client` (bridge, listener, HTTP mode) above.

pub mod clock;
pub mod endpoint;
mod message;
mod reader;

pub use clock::Clock;
pub use endpoint::{
    CloseReply, CloseState, Config, ControlHandle, ForwardError, Item, Reader, Role, Writer,
    forward_data, from_halves, split,
};
pub use message::Message;
pub use reader::{FrameReader, HEADROOM, Peer, ReadError};
