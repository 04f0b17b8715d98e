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

/// Implements `tokio::io::AsyncWrite` for a wrapper by passing every call to its field:
/// `delegate_async_write!([IO: AsyncWrite + Unpin] Wrapper<IO>, io);` (for wrappers that only
/// change how reads work).
#[macro_export]
macro_rules! delegate_async_write {
    ([$($generics:tt)*] $ty:ty, $field:ident) => {
        impl<$($generics)*> ::tokio::io::AsyncWrite for $ty {
            fn poll_write(
                mut self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
                buf: &[u8],
            ) -> ::std::task::Poll<::std::io::Result<usize>> {
                ::std::pin::Pin::new(&mut self.$field).poll_write(cx, buf)
            }

            fn poll_write_vectored(
                mut self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
                bufs: &[::std::io::IoSlice<'_>],
            ) -> ::std::task::Poll<::std::io::Result<usize>> {
                ::std::pin::Pin::new(&mut self.$field).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.$field.is_write_vectored()
            }

            fn poll_flush(
                mut self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
            ) -> ::std::task::Poll<::std::io::Result<()>> {
                ::std::pin::Pin::new(&mut self.$field).poll_flush(cx)
            }

            fn poll_shutdown(
                mut self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
            ) -> ::std::task::Poll<::std::io::Result<()>> {
                ::std::pin::Pin::new(&mut self.$field).poll_shutdown(cx)
            }
        }
    };
}
