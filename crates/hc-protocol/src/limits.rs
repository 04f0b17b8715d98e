//! Named limits and timeouts (PROTOCOL.md §14). Each one is hit by a test somewhere in the
//! workspace; change a value here and the behaviour everywhere follows.

use std::time::Duration;

/// Listeners (control channels) per hybrid connection; the 26th is refused (§5.1).
pub const MAX_LISTENERS_PER_HYBRID_CONNECTION: usize = 25;
/// Relay connections per namespace, the Azure quota (§14); configurable on the relay.
pub const DEFAULT_MAX_CONNECTIONS_PER_NAMESPACE: usize = 5_000;
/// Authorization rules per namespace or entity (§3.4).
pub const MAX_AUTHORIZATION_RULES: usize = 12;
/// Longest key name the SDKs accept (§3.1).
pub const MAX_KEY_NAME_LEN: usize = 256;
/// Longest key the SDKs accept (§3.1).
pub const MAX_KEY_LEN: usize = 256;
/// Largest control-channel text message either side may send: .NET reads control messages
/// into a fixed 64 KiB buffer (§5.2).
pub const MAX_CONTROL_MESSAGE_BYTES: usize = 64 * 1024;
/// Largest HTTP body carried on the control channel instead of a rendezvous (§8.1).
pub const MAX_CONTROL_BODY_BYTES: usize = 64 * 1024;
/// Largest HTTP header block carried on the control channel (§8.1).
pub const MAX_CONTROL_HEADER_BYTES: usize = 32 * 1024;
/// Largest WebSocket upgrade request head the relay reads (request line + headers).
pub const MAX_HANDSHAKE_BYTES: usize = 16 * 1024;
/// How long a rendezvous (`accept`) address stays valid (§5.2, "about 30 seconds").
pub const RENDEZVOUS_TIMEOUT: Duration = Duration::from_secs(30);
/// Tokens are accepted this long after `se` to absorb clock differences (§3.5).
pub const CLOCK_SKEW_SECS: u64 = 30;
/// An expired control channel is closed only this long after expiry, since SDKs renew
/// exactly at `se` (§3.5).
pub const TOKEN_RENEWAL_GRACE: Duration = Duration::from_secs(60);
/// First HTTP response must come within this (§8.2).
pub const HTTP_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// Keep-alive ping interval the SDKs use (§5.4).
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(210);
