//! The client side of the WebSocket upgrade (RFC 6455 §4.1). Unlike ready-made clients it
//! reports the status line *with its reason phrase*, which is where the relay puts its error
//! text (PROTOCOL.md §9.1), and it hands back any bytes read past the response head.

use std::pin::Pin;
use std::task::{Context, Poll};

use base64::Engine as _;
use hc_protocol::frame;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::BoxIo;
use crate::error::{Error, ErrorKind};

/// Largest response head accepted.
const MAX_HEAD: usize = 16 * 1024;

/// A response head.
#[derive(Debug, Clone)]
pub struct Head {
    /// Status code.
    pub status: u16,
    /// Reason phrase as sent.
    pub reason: String,
    /// Headers with lower-cased names.
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// First value of `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// A socket whose first bytes were already read with the response head.
pub struct Prefixed {
    prefix: Vec<u8>,
    pos: usize,
    inner: BoxIo,
}

impl std::fmt::Debug for Prefixed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prefixed").field("prefix", &(self.prefix.len() - self.pos)).finish()
    }
}

impl AsyncRead for Prefixed {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.prefix.len() {
            let n = buf.remaining().min(this.prefix.len() - this.pos);
            buf.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// An upgraded connection.
#[derive(Debug)]
pub struct WsStream {
    /// The socket, positioned at the first frame.
    pub io: Prefixed,
    /// Sub-protocol the server chose.
    pub protocol: Option<String>,
}

/// Sends a WebSocket upgrade for `target` (path and query) with `Host: authority` and reads
/// the response head. A 101 is checked (`Sec-WebSocket-Accept`) and returned as a stream;
/// any other status comes back as the head.
pub async fn upgrade(mut io: BoxIo, target: &str, authority: &str, headers: &[(&str, &str)]) -> Result<Result<WsStream, Head>, Error> {
    let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
    let mut request = format!(
        "GET {target} HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n"
    );
    for (k, v) in headers {
        request.push_str(k);
        request.push_str(": ");
        request.push_str(v);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    io.write_all(request.as_bytes()).await?;
    io.flush().await?;
    let (head, rest) = read_head(&mut io).await?;
    let prefixed = Prefixed { prefix: rest, pos: 0, inner: io };
    if head.status != 101 {
        return Ok(Err(head));
    }
    if head.header("sec-websocket-accept") != Some(frame::accept_key(&key).as_str()) {
        return Err(Error::new(ErrorKind::Protocol, "relay answered 101 with a wrong Sec-WebSocket-Accept"));
    }
    let protocol = head.header("sec-websocket-protocol").map(str::to_owned);
    Ok(Ok(WsStream { io: prefixed, protocol }))
}

/// Sends a plain HTTP/1.1 request with `Connection: close` and reads the whole response.
pub async fn http_get(mut io: BoxIo, target: &str, authority: &str, headers: &[(&str, &str)]) -> Result<(Head, Vec<u8>), Error> {
    let mut request = format!("GET {target} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    io.write_all(request.as_bytes()).await?;
    io.flush().await?;
    let (head, mut body) = read_head(&mut io).await?;
    let limit = 1024 * 1024;
    let mut chunk = [0u8; 8192];
    loop {
        let n = match io.read(&mut chunk).await {
            Ok(n) => n,
            // Servers may drop TLS without close_notify after `Connection: close`.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
        if body.len() > limit {
            return Err(Error::new(ErrorKind::Protocol, "response body larger than 1 MiB"));
        }
    }
    if let Some(len) = head.header("content-length").and_then(|l| l.parse::<usize>().ok()) {
        body.truncate(len);
    }
    Ok((head, body))
}

async fn read_head(io: &mut BoxIo) -> Result<(Head, Vec<u8>), Error> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err(Error::new(ErrorKind::Protocol, "relay response head is larger than 16 KiB"));
        }
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            return Err(Error::new(ErrorKind::Network, "relay closed the connection before answering"));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let text = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let status = parts.next().and_then(|s| s.parse().ok()).filter(|_| version.starts_with("HTTP/1."));
    let status = status.ok_or_else(|| Error::new(ErrorKind::Protocol, format!("relay sent a bad status line: {status_line:?}")))?;
    let reason = parts.next().unwrap_or_default().to_owned();
    let headers = lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned())).collect();
    Ok((Head { status, reason, headers }, buf[end..].to_vec()))
}
