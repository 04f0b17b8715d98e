//! The sender library: connect through a hybrid connection and get a byte stream
//! (PROTOCOL.md §7). Works against the emulator and the real Azure Relay alike.
//!
//! ```no_run
//! # async fn demo() -> Result<(), hc_client::Error> {
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//! let tls = hc_client::tls::client_config(None)?;
//! let hc = app_side_shim::HybridConnection::from_connection_string(
//!     "Endpoint=sb://contoso.servicebus.windows.net/;SharedAccessKeyName=defaultSender;SharedAccessKey=…;EntityPath=db", tls)?;
//! let mut stream = hc.connect().await?;      // AsyncRead + AsyncWrite, half-close with shutdown()
//! stream.write_all(b"PING\r\n").await?;
//! stream.shutdown().await?;
//! let mut reply = Vec::new();
//! stream.read_to_end(&mut reply).await?;
//! # Ok(()) }
//! ```

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hc_client::handshake::WsStream;
use hc_client::relay::RelayEndpoint;
use hc_client::token::TokenProvider;
use hc_client::warm::WarmOptions;
use hc_client::{Error, ErrorKind};
use hc_protocol::{ConnectionString, Credential, SasKey};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};

/// Lifetime of the tokens a sender makes; each connect makes a fresh one.
const TOKEN_TTL: Duration = Duration::from_secs(3600);
/// Bytes buffered between the application and the relay pump, per direction.
const STREAM_BUFFER: usize = 64 * 1024;

/// A hybrid connection to send through.
#[derive(Clone)]
pub struct HybridConnection {
    endpoint: RelayEndpoint,
    path: String,
    tokens: TokenProvider,
    /// Deadline for a whole connect (relay, rendezvous, listener's answer).
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for HybridConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HybridConnection")
            .field("endpoint", &self.endpoint)
            .field("path", &self.path)
            .field("tokens", &self.tokens)
            .finish()
    }
}

impl HybridConnection {
    /// From a connection string with `EntityPath` (a Send key, a token, or no credentials).
    pub fn from_connection_string(
        text: &str,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Self, Error> {
        let cs = ConnectionString::parse(text)
            .map_err(|e| Error::new(ErrorKind::Config, e.to_string()))?;
        let path = cs
            .entity_path
            .clone()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| {
                Error::new(ErrorKind::Config, "the connection string has no EntityPath")
            })?;
        let endpoint = RelayEndpoint::from_endpoint(&cs.endpoint, tls)?;
        Ok(Self::build(
            endpoint,
            path,
            TokenProvider::from_connection_string(&cs, TOKEN_TTL),
        ))
    }

    /// From a namespace endpoint (`sb://contoso.servicebus.windows.net/`), a hybrid connection
    /// path, and a Send rule's name and key.
    pub fn with_key(
        namespace_endpoint: &str,
        path: &str,
        key_name: &str,
        key: &str,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Self, Error> {
        let key = SasKey::new(key).map_err(|e| Error::new(ErrorKind::Config, e.to_string()))?;
        let cs = ConnectionString {
            endpoint: namespace_endpoint.to_owned(),
            entity_path: Some(path.to_owned()),
            credential: Some(Credential::Key {
                name: key_name.to_owned(),
                key,
            }),
            operation_timeout: None,
            authentication: None,
        };
        Self::from_connection_string(&cs.expose(), tls)
    }

    /// Without credentials, for hybrid connections that do not require client authorization.
    pub fn anonymous(
        namespace_endpoint: &str,
        path: &str,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Self, Error> {
        let endpoint = RelayEndpoint::from_endpoint(namespace_endpoint, tls)?;
        Ok(Self::build(endpoint, path.to_owned(), TokenProvider::None))
    }

    fn build(endpoint: RelayEndpoint, path: String, tokens: TokenProvider) -> Self {
        HybridConnection {
            endpoint,
            path,
            tokens,
            connect_timeout: Duration::from_secs(60),
        }
    }

    /// This hybrid connection, keeping up to `options.size` connections to the relay open
    /// ahead of need while it is in use ([`hc_client::warm`]), so a connect pays only its
    /// WebSocket upgrade. `size` 0 leaves every connect to dial.
    pub fn with_warm_connections(mut self, options: WarmOptions) -> Self {
        self.endpoint.warm = options.pool();
        self
    }

    /// Namespace host.
    pub fn namespace(&self) -> &str {
        &self.endpoint.host
    }

    /// Hybrid connection path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Opens a relayed WebSocket (for callers that bridge it themselves).
    pub async fn connect_ws(&self) -> Result<WsStream, Error> {
        let id = hc_protocol::tracking::guid_from_bytes(rand::random());
        let work = hc_client::sender::connect(&self.endpoint, &self.path, &self.tokens, &id);
        tokio::time::timeout(self.connect_timeout, work)
            .await
            .map_err(|_| {
                Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "connecting through '{}' took longer than {} s",
                        self.path,
                        self.connect_timeout.as_secs()
                    ),
                )
            })?
    }

    /// Opens a byte stream through the hybrid connection. `shutdown()` half-closes it (the
    /// listener's side sees EOF and can still answer); dropping it ends the connection.
    pub async fn connect(&self) -> Result<RelayStream, Error> {
        let ws = self.connect_ws().await?;
        let (app, pump) = tokio::io::duplex(STREAM_BUFFER);
        let task = tokio::spawn(hc_client::bridge::bridge_stream(ws, pump, STREAM_BUFFER));
        Ok(RelayStream {
            inner: app,
            _task: task,
        })
    }
}

/// A byte stream through a hybrid connection.
#[derive(Debug)]
pub struct RelayStream {
    inner: DuplexStream,
    _task: tokio::task::JoinHandle<hc_client::bridge::BridgeReport>,
}

impl AsyncRead for RelayStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for RelayStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
