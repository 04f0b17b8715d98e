//! Where a relay namespace is and how to open a socket to it.
//!
//! From a connection string's `Endpoint`: `sb://host[:port]/` (also `wss://`, `https://`)
//! means TLS, port 443 unless given; `ws://` or `http://` means plain WebSockets (for the
//! emulator's `--plain` mode). `localhost` and `*.localhost` resolve to 127.0.0.1 (RFC 6761),
//! so every emulator namespace is reachable without DNS entries.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use crate::error::{Error, ErrorKind};
use crate::handshake::{self, Head, WsStream};
use crate::warm::WarmPool;
use crate::{BoxIo, Clock};

/// The future a [`Connector`] returns.
pub type Connecting = Pin<Box<dyn Future<Output = std::io::Result<BoxIo>> + Send>>;

/// What opens one connection.
type OpenFn = dyn Fn(&str, u16) -> Connecting + Send + Sync;

/// Opens a byte stream to `host:port` in place of TCP and TLS (tests hand the relay the other
/// end of an in-memory pipe).
#[derive(Clone)]
pub struct Connector(Arc<OpenFn>);

impl Connector {
    /// A connector calling `open` for every connection.
    pub fn new(open: impl Fn(&str, u16) -> Connecting + Send + Sync + 'static) -> Self {
        Connector(Arc::new(open))
    }
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Connector")
    }
}

/// A relay namespace endpoint.
#[derive(Clone)]
pub struct RelayEndpoint {
    /// Namespace host name (lower-case).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// TLS configuration; `None` for plain `ws://`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Time allowed for TCP connect plus TLS handshake.
    pub connect_timeout: Duration,
    /// Opens connections instead of TCP (and TLS) when set.
    pub connector: Option<Connector>,
    /// Where "now" comes from for the tokens signed for this relay.
    pub clock: Clock,
    /// Connections opened ahead of need (`None`: every open dials).
    pub warm: Option<WarmPool>,
}

impl std::fmt::Debug for RelayEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayEndpoint")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls.is_some())
            .field("connector", &self.connector.is_some())
            .field("warm", &self.warm)
            .finish()
    }
}

impl RelayEndpoint {
    /// Reads `Endpoint=` of a connection string; `tls` is used unless the scheme says plain.
    pub fn from_endpoint(endpoint: &str, tls: Arc<rustls::ClientConfig>) -> Result<Self, Error> {
        let parts = hc_protocol::uri::parse(endpoint)
            .map_err(|e| Error::new(ErrorKind::Config, e.to_string()))?;
        let plain = matches!(
            parts.scheme.map(str::to_ascii_lowercase).as_deref(),
            Some("ws" | "http")
        );
        let default_port = if plain { 80 } else { 443 };
        Ok(RelayEndpoint {
            host: parts
                .host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_ascii_lowercase(),
            port: parts.port.unwrap_or(default_port),
            tls: if plain { None } else { Some(tls) },
            connect_timeout: Duration::from_secs(20),
            connector: None,
            clock: Clock::System,
            warm: None,
        })
    }

    /// This endpoint, reached through `connector` instead of TCP and TLS.
    pub fn with_connector(mut self, connector: Connector) -> Self {
        self.connector = Some(connector);
        self
    }

    /// This endpoint, taking connections from `pool` when it has one ready.
    pub fn with_warm(mut self, pool: WarmPool) -> Self {
        self.warm = Some(pool);
        self
    }

    /// This endpoint, signing tokens with `clock`'s time.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// `host[:port]` as it goes in URLs and the Host header (port left out when default).
    pub fn authority(&self) -> String {
        let default = if self.tls.is_some() { 443 } else { 80 };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// `wss` or `ws`.
    pub fn ws_scheme(&self) -> &'static str {
        if self.tls.is_some() { "wss" } else { "ws" }
    }

    /// Sends a WebSocket upgrade for `target` to `host:port` ([`handshake::upgrade`]) on a
    /// warm connection when the pool has one ready, else on a new one. Tunnels (sender
    /// connects, rendezvous) come here; control channels and plain requests open their own,
    /// so only the destinations of tunnels are kept warm. When a warm connection fails before
    /// any answer (the relay closed it just as it was taken), the upgrade is sent once more
    /// on a new connection: no request reached the relay.
    pub async fn upgrade(
        &self,
        host: &str,
        port: u16,
        target: &str,
        authority: &str,
        headers: &[(&str, &str)],
    ) -> Result<Result<WsStream, Head>, Error> {
        let taken = self.warm.as_ref().and_then(|p| p.take(self, host, port));
        let warm = taken.is_some();
        let io = match taken {
            Some(io) => io,
            None => self.open(host, port).await?,
        };
        match handshake::upgrade(io, target, authority, headers).await {
            Err(e) if warm && *e.kind() == ErrorKind::Network => {
                let io = self.open(host, port).await?;
                handshake::upgrade(io, target, authority, headers).await
            }
            other => other,
        }
    }

    /// Opens a new socket to `host:port` (as given in a URL), with TLS when configured.
    pub async fn open(&self, host: &str, port: u16) -> Result<BoxIo, Error> {
        if let Some(connect) = &self.connector {
            return (connect.0)(host, port).await.map_err(|e| {
                Error::new(
                    ErrorKind::Network,
                    format!("cannot reach the relay at {host}:{port}: {e}"),
                )
            });
        }
        let work = async {
            let tcp = connect_tcp(host, port).await?;
            let _ = tcp.set_nodelay(true);
            match &self.tls {
                None => Ok(Box::new(tcp) as BoxIo),
                Some(config) => {
                    let name = ServerName::try_from(host.to_owned()).map_err(|e| {
                        Error::new(ErrorKind::Config, format!("bad host name '{host}': {e}"))
                    })?;
                    let tls = tokio_rustls::TlsConnector::from(config.clone())
                        .connect(name, tcp)
                        .await
                        .map_err(|e| {
                            Error::new(
                                ErrorKind::Network,
                                format!("TLS to {host}:{port} failed: {e}"),
                            )
                        })?;
                    Ok(Box::new(tls) as BoxIo)
                }
            }
        };
        tokio::time::timeout(self.connect_timeout, work)
            .await
            .map_err(|_| {
                Error::new(
                    ErrorKind::Timeout,
                    format!("connecting to the relay at {host}:{port} timed out"),
                )
            })?
    }

    /// Opens a socket to the namespace itself.
    pub async fn open_namespace(&self) -> Result<BoxIo, Error> {
        self.open(&self.host, self.port).await
    }
}

/// TCP connect, with `localhost`/`*.localhost` going to 127.0.0.1.
pub async fn connect_tcp(host: &str, port: u16) -> Result<TcpStream, Error> {
    let lower = host.to_ascii_lowercase();
    let result = if lower == "localhost" || lower.ends_with(".localhost") {
        TcpStream::connect(("127.0.0.1", port)).await
    } else {
        TcpStream::connect((host.trim_start_matches('[').trim_end_matches(']'), port)).await
    };
    result.map_err(|e| {
        Error::new(
            ErrorKind::Network,
            format!("cannot reach the relay at {host}:{port}: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let tls = crate::tls::client_config(None).unwrap();
        let e = RelayEndpoint::from_endpoint("sb://Contoso.servicebus.windows.net/", tls.clone())
            .unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.tls.is_some(), e.authority()),
            (
                "contoso.servicebus.windows.net",
                443,
                true,
                "contoso.servicebus.windows.net".into()
            )
        );
        let e = RelayEndpoint::from_endpoint("sb://localhost:9443/", tls.clone()).unwrap();
        assert_eq!((e.port, e.authority()), (9443, "localhost:9443".into()));
        let e = RelayEndpoint::from_endpoint("ws://localhost:9080/", tls).unwrap();
        assert_eq!((e.port, e.tls.is_none(), e.ws_scheme()), (9080, true, "ws"));
    }
}
