//! The client half of Azure Relay Hybrid Connections, shared by `hcm` (listener side) and the
//! app-side shim (sender side). It works against the emulator and against the real service
//! alike: nothing here is emulator-specific, except that `*.localhost` names resolve to
//! loopback (RFC 6761) and a `ws://` endpoint selects plain WebSockets.
//!
//! Modules: `tls` (trust roots, cipher order), `relay` (where the relay is and how to reach it), `token`
//! (SAS tokens from a connection string), `handshake` (the WebSocket upgrade, written and
//! parsed here, and plain requests on hyper's client, keeping status and reason phrase), `listener` (control channel, accept, reject), `sender` (connect),
//! `runtime` (runtime-info GET), `schedule` (renewal and keep-alive times), `bridge` (WebSocket <-> TCP with half-close), `backoff`,
//! `warm` (connections to the relay opened ahead of need).

pub mod backoff;
pub mod bridge;
pub mod error;
pub mod handshake;
pub mod http;
pub mod listener;
pub mod relay;
pub mod runtime;
pub mod schedule;
pub mod sender;
pub mod tls;
pub mod token;
pub mod warm;

pub use error::{Error, ErrorKind};
pub use hc_ws::Clock;
pub use relay::RelayEndpoint;

use tokio::io::{AsyncRead, AsyncWrite};

/// A byte stream to the relay: TCP or TLS over TCP.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A boxed [`Io`].
pub type BoxIo = Box<dyn Io>;

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}
