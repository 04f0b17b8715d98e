//! What every task of one relay shares ([`RelayState`]: the store, the live registry, the
//! options, TLS, shutdown) and the options themselves.

use std::sync::Arc;
use std::time::Duration;

use hc_protocol::limits::{
    DEFAULT_MAX_CONNECTIONS_PER_NAMESPACE, RENDEZVOUS_TIMEOUT, TOKEN_RENEWAL_GRACE,
};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::registry;
use crate::store::Store;

/// Tunable behaviour; the defaults follow PROTOCOL.md §14.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// How long a sender waits for its listener to join (§6.1).
    pub rendezvous_timeout: Duration,
    /// How long an expired control channel stays open waiting for `renewToken` (§3.5).
    pub token_grace: Duration,
    /// Relay connections (listeners + tunnels) per namespace (§14).
    pub max_connections_per_namespace: usize,
    /// Senders and HTTP requests that may wait for a listener at once, per namespace.
    pub max_pending_rendezvous: usize,
    /// Time allowed for a TLS handshake and for a request head.
    pub handshake_timeout: Duration,
    /// How long shutdown waits for connections to close.
    pub shutdown_grace: Duration,
    /// Read buffer per tunnel direction, allocated only while data flows.
    pub tunnel_buffer_size: usize,
    /// Ping listeners' control channels this often and drop one that leaves two pings in a row
    /// unanswered (anything it sends counts), so a listener whose host vanished without closing
    /// TCP stops being chosen.
    /// `None` turns it off.
    pub listener_keepalive: Option<Duration>,
    /// HTTP request mode: first response deadline, and the idle limit of a response body (§8.2).
    pub http_response_timeout: Duration,
    /// HTTP request mode: status when no listener is connected (404 as seen in the field, or
    /// 502 as the docs say, §8.1).
    pub http_no_listener_status: u16,
    /// HTTP request mode: how long a small body may take to arrive before the request goes
    /// by rendezvous instead of the control channel.
    pub small_body_wait: Duration,
    /// Where "now" comes from for token checks and deadlines (tests pass a clock that
    /// follows paused tokio time).
    pub clock: hc_ws::Clock,
    /// The management plane (ARM endpoint).
    pub arm: ArmOptions,
    /// Serve `/healthz`, `/readyz`, `/metrics` and the status page to any address without
    /// credentials (containers, where the host's requests come from a bridge address).
    /// Otherwise loopback clients need none, and others a Manage SAS token or an issued
    /// management bearer token.
    pub status_open: bool,
}

/// How the ARM endpoint behaves (ARM.md §4.7, §8).
#[derive(Debug, Clone)]
pub struct ArmOptions {
    /// Tenant id of issued tokens and `/tenants`.
    pub tenant: String,
    /// Subscription `/subscriptions` lists first (ARM paths may name any).
    pub subscription: String,
    /// Accept only bearer tokens this relay issued (signature and expiry checked) instead of
    /// any non-empty one.
    pub strict_auth: bool,
    /// Hybrid-connection `listKeys` connection strings end with `;EntityPath={hc}` (as the
    /// App Service gateway string does; the spec example omits it, ARM.md §8.1).
    pub entity_path_in_keys: bool,
    /// Namespaces made through ARM also answer to `{name}.servicebus.windows.net`, and
    /// `listKeys` and `serviceBusEndpoint` use that name (map it to loopback to use it).
    pub azure_host_names: bool,
}

impl Default for ArmOptions {
    fn default() -> Self {
        ArmOptions {
            tenant: crate::model::DEFAULT_SUBSCRIPTION.into(),
            subscription: crate::model::DEFAULT_SUBSCRIPTION.into(),
            strict_auth: false,
            entity_path_in_keys: true,
            azure_host_names: false,
        }
    }
}

impl Default for RelayOptions {
    fn default() -> Self {
        RelayOptions {
            rendezvous_timeout: RENDEZVOUS_TIMEOUT,
            token_grace: TOKEN_RENEWAL_GRACE,
            max_connections_per_namespace: DEFAULT_MAX_CONNECTIONS_PER_NAMESPACE,
            max_pending_rendezvous: 10_000,
            handshake_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
            tunnel_buffer_size: 64 * 1024,
            listener_keepalive: Some(Duration::from_secs(30)),
            http_response_timeout: hc_protocol::limits::HTTP_RESPONSE_TIMEOUT,
            http_no_listener_status: 404,
            small_body_wait: Duration::from_secs(2),
            clock: hc_ws::Clock::System,
            arm: ArmOptions::default(),
            status_open: false,
        }
    }
}

/// State shared by every task of one relay.
#[derive(Debug)]
pub(crate) struct RelayState {
    /// Durable model.
    pub store: Store,
    /// Live listeners, rendezvous and quotas.
    pub registry: Arc<registry::Registry>,
    /// Behaviour.
    pub options: RelayOptions,
    /// TLS, or plain ws/http when `None`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Cancelled once to shut everything down.
    pub cancel: CancellationToken,
    /// Every connection and tunnel task.
    pub tracker: TaskTracker,
    /// TLS for the ARM endpoint (HTTPS even when the data plane is plain), when there is
    /// TLS material.
    pub management_tls: Option<Arc<rustls::ServerConfig>>,
    /// Key that signs the bearer tokens the ARM endpoint issues.
    pub token_key: TokenKey,
    /// The data plane's port, once it serves on a socket (0 before): connection strings the
    /// ARM endpoint hands out name it.
    pub data_port: std::sync::atomic::AtomicU16,
    /// Counters, live tunnels and refusals (metrics and the status page).
    pub telemetry: crate::telemetry::Telemetry,
    /// The certificates `/readyz` verifies, when the data plane serves TLS.
    pub tls_check: std::sync::OnceLock<crate::certs::TlsCheck>,
    /// Unix seconds when the relay was made.
    pub started: u64,
    /// Injected faults.
    pub faults: Arc<crate::fault::Faults>,
}

/// An HMAC key for issued tokens; `Debug` shows nothing of it.
#[derive(Clone)]
pub(crate) struct TokenKey(pub [u8; 32]);

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(<redacted>)")
    }
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}
