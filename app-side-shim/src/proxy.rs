//! Proxy mode: SOCKS5 (RFC 1928, no authentication, CONNECT only) and HTTP CONNECT. A
//! request whose `host:port` matches a configured endpoint is tunnelled through its hybrid
//! connection; any other is refused, or connected directly with `--allow-direct`.
//!
//! As in App Service, endpoints are matched by host name: an IP literal does not match an
//! endpoint configured by name (the refusal says so). SOCKS5 clients should send names
//! (`curl --socks5-hostname`, not `--socks5`).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hc_client::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::config::Target;

/// What to do with a requested `host:port`.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Through this hybrid connection.
    Tunnel(Arc<Target>),
    /// Straight to the host (`--allow-direct`).
    Direct,
    /// Refused, with the reason.
    Refuse(String),
}

/// Matches requests against the configured endpoints; the set can be replaced while the
/// proxies run (`--app` picks up the app's changes).
#[derive(Debug)]
pub struct Router {
    targets: std::sync::RwLock<Arc<Vec<Arc<Target>>>>,
    allow_direct: bool,
}

impl Router {
    /// A router over `targets`.
    pub fn new(targets: Vec<Arc<Target>>, allow_direct: bool) -> Self {
        Router {
            targets: std::sync::RwLock::new(Arc::new(targets)),
            allow_direct,
        }
    }

    /// The current set.
    pub fn targets(&self) -> Arc<Vec<Arc<Target>>> {
        self.targets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the set; requests decided from now on use the new one.
    pub fn replace(&self, targets: Vec<Arc<Target>>) {
        crate::metrics::metrics().set_routes(targets.len());
        *self.targets.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(targets);
    }

    /// Decides for `host:port` (`host` lower-cased, IPv6 without brackets).
    pub fn decide(&self, host: &str, port: u16) -> Decision {
        let host = host.to_ascii_lowercase();
        let targets = self.targets();
        if let Some(t) = targets
            .iter()
            .find(|t| t.hostname == host && t.port == port)
        {
            return Decision::Tunnel(t.clone());
        }
        if self.allow_direct {
            return Decision::Direct;
        }
        let configured: Vec<String> = targets.iter().map(|t| t.endpoint()).collect();
        let reason = if host.parse::<IpAddr>().is_ok() {
            format!(
                "{host}:{port} is an IP address; hybrid connections match endpoint host names, as in App Service (configured: {}). Ask for the name (e.g. curl --socks5-hostname).",
                configured.join(", ")
            )
        } else {
            format!(
                "{host}:{port} is not the endpoint of any configured hybrid connection (configured: {})",
                configured.join(", ")
            )
        };
        Decision::Refuse(reason)
    }
}

/// What every local listener of one shim shares: the cap on connections held at once, and
/// how long a proxy client may take to say where it wants to go.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections (proxy clients and forwarded connections) held at once; more are closed
    /// as soon as they are accepted, so a flood of idle clients cannot use up descriptors.
    pub slots: Arc<Semaphore>,
    /// The cap behind `slots`, for messages.
    pub max_connections: usize,
    /// Time allowed for a SOCKS5 or HTTP CONNECT handshake.
    pub handshake_timeout: Duration,
}

impl Limits {
    /// Limits of `max_connections` held at once and `handshake_timeout` per handshake.
    pub fn new(max_connections: usize, handshake_timeout: Duration) -> Self {
        Limits {
            slots: Arc::new(Semaphore::new(max_connections)),
            max_connections,
            handshake_timeout,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::new(10_000, Duration::from_secs(10))
    }
}

/// Accepts SOCKS5 clients until `cancel`.
pub async fn serve_socks5(
    listener: TcpListener,
    router: Arc<Router>,
    limits: Limits,
    tracker: TaskTracker,
    cancel: CancellationToken,
) {
    let deadline = limits.handshake_timeout;
    accept_loop(listener, limits, tracker, cancel, move |tcp, peer, slot| {
        socks5(tcp, peer, router.clone(), deadline, slot)
    })
    .await
}

/// Accepts HTTP CONNECT clients until `cancel`.
pub async fn serve_http_connect(
    listener: TcpListener,
    router: Arc<Router>,
    limits: Limits,
    tracker: TaskTracker,
    cancel: CancellationToken,
) {
    let deadline = limits.handshake_timeout;
    accept_loop(listener, limits, tracker, cancel, move |tcp, peer, slot| {
        http_connect(tcp, peer, router.clone(), deadline, slot)
    })
    .await
}

/// Accepts until `cancel`; each connection holds one of `limits`' slots while it lives (the
/// handler keeps it: wrapping its future in another would store that future twice).
pub(crate) async fn accept_loop<F, Fut>(
    listener: TcpListener,
    limits: Limits,
    tracker: TaskTracker,
    cancel: CancellationToken,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr, OwnedSemaphorePermit) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let Ok(slot) = limits.slots.clone().try_acquire_owned() else {
                        warn!(%peer, max = limits.max_connections, "connection limit reached; closing the new connection");
                        let _ = tcp.set_zero_linger();
                        continue;
                    };
                    let _ = tcp.set_nodelay(true);
                    tracker.spawn(handle(tcp, peer, slot));
                }
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = cancel.cancelled() => return,
        }
    }
}

/// SOCKS5 reply codes (RFC 1928 §6).
mod reply {
    pub const SUCCEEDED: u8 = 0x00;
    pub const GENERAL_FAILURE: u8 = 0x01;
    pub const NOT_ALLOWED: u8 = 0x02;
    pub const NETWORK_UNREACHABLE: u8 = 0x03;
    pub const HOST_UNREACHABLE: u8 = 0x04;
    pub const CONNECTION_REFUSED: u8 = 0x05;
    pub const TTL_EXPIRED: u8 = 0x06;
    pub const COMMAND_NOT_SUPPORTED: u8 = 0x07;
    pub const ADDRESS_NOT_SUPPORTED: u8 = 0x08;
}

/// The SOCKS5 reply for a failed relay connect.
fn socks_code(e: &Error) -> u8 {
    if e.is_no_listener() {
        reply::NETWORK_UNREACHABLE
    } else if e.is_endpoint_not_found() {
        reply::HOST_UNREACHABLE
    } else if e.is_rejected() {
        reply::CONNECTION_REFUSED
    } else if e.is_unauthorized() {
        reply::NOT_ALLOWED
    } else if e.is_timeout() {
        reply::TTL_EXPIRED
    } else {
        reply::GENERAL_FAILURE
    }
}

async fn socks_reply(tcp: &mut TcpStream, code: u8) -> std::io::Result<()> {
    tcp.write_all(&[5, code, 0, 1, 0, 0, 0, 0, 0, 0]).await
}

/// How a SOCKS5 handshake ended before a destination was known.
enum SocksRefusal {
    /// `05 FF` was sent: the client offered no method we take; close without more.
    NoMethod,
    /// Reply with this code, then close.
    Reply(u8),
}

/// Reads a SOCKS5 greeting and CONNECT request (RFC 1928 §3, §4): `(host, port)`. Each
/// message is read with the fewest reads its length fields allow.
async fn socks5_request(
    tcp: &mut TcpStream,
) -> std::io::Result<Result<(String, u16), SocksRefusal>> {
    let mut head = [0u8; 2];
    tcp.read_exact(&mut head).await?;
    let mut methods = vec![0u8; head[1] as usize];
    tcp.read_exact(&mut methods).await?;
    if head[0] != 5 || !methods.contains(&0) {
        tcp.write_all(&[5, 0xff]).await?;
        return Ok(Err(SocksRefusal::NoMethod));
    }
    tcp.write_all(&[5, 0]).await?;
    // VER CMD RSV ATYP, then the first byte of the address (the name length for ATYP 3).
    let mut req = [0u8; 5];
    tcp.read_exact(&mut req).await?;
    if req[1] != 1 {
        return Ok(Err(SocksRefusal::Reply(reply::COMMAND_NOT_SUPPORTED)));
    }
    let rest = match req[3] {
        1 => 3 + 2,
        3 => req[4] as usize + 2,
        4 => 15 + 2,
        _ => return Ok(Err(SocksRefusal::Reply(reply::ADDRESS_NOT_SUPPORTED))),
    };
    let mut tail = vec![0u8; rest];
    tcp.read_exact(&mut tail).await?;
    let (addr, port) = tail.split_at(rest - 2);
    let port = u16::from_be_bytes([port[0], port[1]]);
    let host = match req[3] {
        1 => IpAddr::from([req[4], addr[0], addr[1], addr[2]]).to_string(),
        3 => String::from_utf8_lossy(addr).into_owned(),
        _ => {
            let mut a = [0u8; 16];
            a[0] = req[4];
            a[1..].copy_from_slice(addr);
            IpAddr::from(a).to_string()
        }
    };
    Ok(Ok((host, port)))
}

async fn socks5(
    mut tcp: TcpStream,
    peer: SocketAddr,
    router: Arc<Router>,
    deadline: Duration,
    _slot: OwnedSemaphorePermit,
) {
    let (host, port) = match tokio::time::timeout(deadline, socks5_request(&mut tcp)).await {
        Ok(Ok(Ok(hp))) => hp,
        Ok(Ok(Err(SocksRefusal::Reply(code)))) => {
            let _ = socks_reply(&mut tcp, code).await;
            return;
        }
        Ok(Ok(Err(SocksRefusal::NoMethod))) | Ok(Err(_)) => return,
        Err(_) => {
            debug!(%peer, "SOCKS5 handshake not finished within {} s; closed", deadline.as_secs_f32());
            return;
        }
    };
    match router.decide(&host, port) {
        Decision::Refuse(reason) => {
            warn!(%peer, request = %format!("{host}:{port}"), %reason, "SOCKS5 request refused");
            let _ = socks_reply(&mut tcp, reply::NOT_ALLOWED).await;
        }
        Decision::Direct => match TcpStream::connect((host.as_str(), port)).await {
            Ok(mut upstream) => {
                if socks_reply(&mut tcp, reply::SUCCEEDED).await.is_ok() {
                    let _ = tokio::io::copy_bidirectional(&mut tcp, &mut upstream).await;
                }
            }
            Err(_) => {
                let _ = socks_reply(&mut tcp, reply::HOST_UNREACHABLE).await;
            }
        },
        Decision::Tunnel(target) => match target.hc.connect_ws().await {
            Ok(ws) => {
                if socks_reply(&mut tcp, reply::SUCCEEDED).await.is_ok() {
                    crate::forward::bridge_logged(ws, tcp, Vec::new(), &target, peer).await;
                }
            }
            Err(e) => {
                crate::metrics::metrics().connect_failed(&target.describe());
                warn!(%peer, endpoint = %target.endpoint(), error = %e, "SOCKS5 tunnel failed");
                let _ = socks_reply(&mut tcp, socks_code(&e)).await;
            }
        },
    }
}

async fn http_answer(tcp: &mut TcpStream, status: &str, body: &str) {
    let text = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}\n",
        body.len() + 1
    );
    let _ = tcp.write_all(text.as_bytes()).await;
    let _ = tcp.shutdown().await;
}

/// Longest CONNECT request head accepted.
const MAX_CONNECT_HEAD: usize = 8192;

/// What a CONNECT request head said, with the bytes the client sent after it (a client may
/// send its first bytes, such as a TLS ClientHello, without waiting for the 200).
enum ConnectHead {
    /// `CONNECT host:port`.
    Connect {
        host: String,
        port: u16,
        early: Vec<u8>,
    },
    /// Another method, or a target without a port.
    NotConnect,
}

/// Reads the request head in chunks until its blank line.
async fn read_connect(tcp: &mut TcpStream) -> std::io::Result<ConnectHead> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_CONNECT_HEAD {
            return Err(std::io::Error::other("request head too long"));
        }
        let n = tcp.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::other(
                "connection closed inside the request head",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let text = String::from_utf8_lossy(&buf[..end]);
    let mut parts = text.split_whitespace();
    let (Some(method), Some(authority)) = (parts.next(), parts.next()) else {
        return Ok(ConnectHead::NotConnect);
    };
    if !method.eq_ignore_ascii_case("CONNECT") {
        return Ok(ConnectHead::NotConnect);
    }
    let Some((host, Some(port))) = hc_protocol::uri::split_host_port(authority) else {
        return Ok(ConnectHead::NotConnect);
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    Ok(ConnectHead::Connect {
        host,
        port,
        early: buf[end..].to_vec(),
    })
}

async fn http_connect(
    mut tcp: TcpStream,
    peer: SocketAddr,
    router: Arc<Router>,
    deadline: Duration,
    _slot: OwnedSemaphorePermit,
) {
    let (host, port, early) = match tokio::time::timeout(deadline, read_connect(&mut tcp)).await {
        Ok(Ok(ConnectHead::Connect { host, port, early })) => (host, port, early),
        Ok(Ok(ConnectHead::NotConnect)) => {
            return http_answer(
                &mut tcp,
                "405 Method Not Allowed",
                "This proxy only takes CONNECT host:port.",
            )
            .await;
        }
        Ok(Err(_)) => {
            return http_answer(&mut tcp, "400 Bad Request", "Malformed request head.").await;
        }
        Err(_) => {
            return http_answer(
                &mut tcp,
                "408 Request Timeout",
                "The CONNECT request head did not arrive in time.",
            )
            .await;
        }
    };
    match router.decide(&host, port) {
        Decision::Refuse(reason) => {
            warn!(%peer, request = %format!("{host}:{port}"), %reason, "CONNECT refused");
            http_answer(&mut tcp, "403 Forbidden", &reason).await
        }
        Decision::Direct => match TcpStream::connect((host.as_str(), port)).await {
            Ok(mut upstream) => {
                if tcp
                    .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                    .await
                    .is_ok()
                    && upstream.write_all(&early).await.is_ok()
                {
                    let _ = tokio::io::copy_bidirectional(&mut tcp, &mut upstream).await;
                }
            }
            Err(e) => {
                http_answer(&mut tcp, "502 Bad Gateway", &format!("{host}:{port}: {e}")).await
            }
        },
        Decision::Tunnel(target) => match target.hc.connect_ws().await {
            Ok(ws) => {
                if tcp
                    .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                    .await
                    .is_ok()
                {
                    crate::forward::bridge_logged(ws, tcp, early, &target, peer).await;
                }
            }
            Err(e) => {
                crate::metrics::metrics().connect_failed(&target.describe());
                warn!(%peer, endpoint = %target.endpoint(), error = %e, "CONNECT tunnel failed");
                let status = if e.is_timeout() {
                    "504 Gateway Timeout"
                } else {
                    "502 Bad Gateway"
                };
                http_answer(
                    &mut tcp,
                    status,
                    &format!("through hybrid connection {}: {e}", target.describe()),
                )
                .await
            }
        },
    }
}
