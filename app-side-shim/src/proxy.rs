//! Proxy mode: SOCKS5 (RFC 1928, no authentication, CONNECT only) and HTTP CONNECT. A
//! request whose `host:port` matches a configured endpoint is tunnelled through its hybrid
//! connection; any other is refused, or connected directly with `--allow-direct`.
//!
//! As in App Service, endpoints are matched by host name: an IP literal does not match an
//! endpoint configured by name (the refusal says so). SOCKS5 clients should send names
//! (`curl --socks5-hostname`, not `--socks5`).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use hc_client::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

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

/// Matches requests against the configured endpoints.
#[derive(Debug, Clone)]
pub struct Router {
    targets: Vec<Arc<Target>>,
    allow_direct: bool,
}

impl Router {
    /// A router over `targets`.
    pub fn new(targets: Vec<Arc<Target>>, allow_direct: bool) -> Self {
        Router { targets, allow_direct }
    }

    /// Decides for `host:port` (`host` lower-cased, IPv6 without brackets).
    pub fn decide(&self, host: &str, port: u16) -> Decision {
        let host = host.to_ascii_lowercase();
        if let Some(t) = self.targets.iter().find(|t| t.hostname == host && t.port == port) {
            return Decision::Tunnel(t.clone());
        }
        if self.allow_direct {
            return Decision::Direct;
        }
        let configured: Vec<String> = self.targets.iter().map(|t| t.endpoint()).collect();
        let reason = if host.parse::<IpAddr>().is_ok() {
            format!(
                "{host}:{port} is an IP address; hybrid connections match endpoint host names, as in App Service (configured: {}). Ask for the name (e.g. curl --socks5-hostname).",
                configured.join(", ")
            )
        } else {
            format!("{host}:{port} is not the endpoint of any configured hybrid connection (configured: {})", configured.join(", "))
        };
        Decision::Refuse(reason)
    }
}

/// Accepts SOCKS5 clients until `cancel`.
pub async fn serve_socks5(listener: TcpListener, router: Arc<Router>, tracker: TaskTracker, cancel: CancellationToken) {
    accept_loop(listener, tracker, cancel, move |tcp, peer| socks5(tcp, peer, router.clone())).await
}

/// Accepts HTTP CONNECT clients until `cancel`.
pub async fn serve_http_connect(listener: TcpListener, router: Arc<Router>, tracker: TaskTracker, cancel: CancellationToken) {
    accept_loop(listener, tracker, cancel, move |tcp, peer| http_connect(tcp, peer, router.clone())).await
}

async fn accept_loop<F, Fut>(listener: TcpListener, tracker: TaskTracker, cancel: CancellationToken, handle: F)
where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    tracker.spawn(handle(tcp, peer));
                }
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
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
    } else if e.is_quota_exceeded() {
        reply::GENERAL_FAILURE
    } else if e.is_timeout() {
        reply::TTL_EXPIRED
    } else {
        reply::GENERAL_FAILURE
    }
}

async fn socks_reply(tcp: &mut TcpStream, code: u8) -> std::io::Result<()> {
    tcp.write_all(&[5, code, 0, 1, 0, 0, 0, 0, 0, 0]).await
}

/// Reads a SOCKS5 greeting and CONNECT request: `(host, port)`.
async fn socks5_request(tcp: &mut TcpStream) -> std::io::Result<Result<(String, u16), u8>> {
    let mut head = [0u8; 2];
    tcp.read_exact(&mut head).await?;
    let mut methods = vec![0u8; head[1] as usize];
    tcp.read_exact(&mut methods).await?;
    if head[0] != 5 || !methods.contains(&0) {
        tcp.write_all(&[5, 0xff]).await?;
        return Ok(Err(reply::GENERAL_FAILURE));
    }
    tcp.write_all(&[5, 0]).await?;
    let mut req = [0u8; 4];
    tcp.read_exact(&mut req).await?;
    if req[1] != 1 {
        return Ok(Err(reply::COMMAND_NOT_SUPPORTED));
    }
    let host = match req[3] {
        1 => {
            let mut a = [0u8; 4];
            tcp.read_exact(&mut a).await?;
            IpAddr::from(a).to_string()
        }
        3 => {
            let len = tcp.read_u8().await? as usize;
            let mut name = vec![0u8; len];
            tcp.read_exact(&mut name).await?;
            String::from_utf8_lossy(&name).into_owned()
        }
        4 => {
            let mut a = [0u8; 16];
            tcp.read_exact(&mut a).await?;
            IpAddr::from(a).to_string()
        }
        _ => return Ok(Err(reply::ADDRESS_NOT_SUPPORTED)),
    };
    let port = tcp.read_u16().await?;
    Ok(Ok((host, port)))
}

async fn socks5(mut tcp: TcpStream, peer: SocketAddr, router: Arc<Router>) {
    let (host, port) = match socks5_request(&mut tcp).await {
        Ok(Ok(hp)) => hp,
        Ok(Err(code)) => {
            let _ = socks_reply(&mut tcp, code).await;
            return;
        }
        Err(_) => return,
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
                    crate::forward::bridge_logged(ws, tcp, &target, peer).await;
                }
            }
            Err(e) => {
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

/// Reads the request head; `Ok(None)` when it is not a CONNECT.
async fn read_connect(tcp: &mut TcpStream) -> std::io::Result<Option<(String, u16)>> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if buf.len() > 8192 || tcp.read(&mut byte).await? == 0 {
            return Err(std::io::Error::other("bad request head"));
        }
        buf.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&buf);
    let mut parts = text.split_whitespace();
    let (Some(method), Some(authority)) = (parts.next(), parts.next()) else { return Ok(None) };
    if !method.eq_ignore_ascii_case("CONNECT") {
        return Ok(None);
    }
    let Some((host, port)) = hc_protocol::uri::split_host_port(authority) else { return Ok(None) };
    let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    Ok(port.map(|p| (host, p)))
}

async fn http_connect(mut tcp: TcpStream, peer: SocketAddr, router: Arc<Router>) {
    let (host, port) = match read_connect(&mut tcp).await {
        Ok(Some(hp)) => hp,
        Ok(None) => return http_answer(&mut tcp, "405 Method Not Allowed", "This proxy only takes CONNECT host:port.").await,
        Err(_) => return http_answer(&mut tcp, "400 Bad Request", "Malformed request head.").await,
    };
    match router.decide(&host, port) {
        Decision::Refuse(reason) => {
            warn!(%peer, request = %format!("{host}:{port}"), %reason, "CONNECT refused");
            http_answer(&mut tcp, "403 Forbidden", &reason).await
        }
        Decision::Direct => match TcpStream::connect((host.as_str(), port)).await {
            Ok(mut upstream) => {
                if tcp.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n").await.is_ok() {
                    let _ = tokio::io::copy_bidirectional(&mut tcp, &mut upstream).await;
                }
            }
            Err(e) => http_answer(&mut tcp, "502 Bad Gateway", &format!("{host}:{port}: {e}")).await,
        },
        Decision::Tunnel(target) => match target.hc.connect_ws().await {
            Ok(ws) => {
                if tcp.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n").await.is_ok() {
                    crate::forward::bridge_logged(ws, tcp, &target, peer).await;
                }
            }
            Err(e) => {
                warn!(%peer, endpoint = %target.endpoint(), error = %e, "CONNECT tunnel failed");
                let status = if e.is_timeout() { "504 Gateway Timeout" } else { "502 Bad Gateway" };
                http_answer(&mut tcp, status, &format!("through hybrid connection {}: {e}", target.describe())).await
            }
        },
    }
}
