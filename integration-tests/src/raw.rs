//! Raw WebSocket client pieces: a handshake that reports the status line as sent, and a
//! frame-level client (masked writes, unmasked reads) built on `hc_protocol::frame`.

use anyhow::{Context as _, bail};
use base64::Engine as _;
use hc_protocol::frame::{self, FrameHeader, OpCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Io;

/// The answer to a raw upgrade.
pub struct Handshake {
    /// Status code.
    pub status: u16,
    /// Reason phrase exactly as sent.
    pub reason: String,
    /// Response headers, lower-cased names.
    pub headers: Vec<(String, String)>,
    /// The socket, positioned after the response head.
    pub client: RawClient,
}

impl std::fmt::Debug for Handshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshake")
            .field("status", &self.status)
            .field("reason", &self.reason)
            .field("headers", &self.headers)
            .finish()
    }
}

impl Handshake {
    /// First value of a response header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends an upgrade request for `url` on `stream` and reads the response head.
pub async fn handshake(
    mut stream: Box<dyn Io>,
    url: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<Handshake> {
    let parts = hc_protocol::uri::parse(url)?;
    let target = match parts.query {
        Some(q) => format!("{}?{q}", parts.path),
        None => parts.path.to_owned(),
    };
    let authority = match parts.port {
        Some(p) => format!("{}:{p}", parts.host),
        None => parts.host.to_owned(),
    };
    let key = base64::engine::general_purpose::STANDARD.encode(rand_bytes());
    let mut head = format!(
        "GET {target} HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n"
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    let mut buf = Vec::new();
    let end = loop {
        let mut byte = [0u8; 1];
        if stream.read(&mut byte).await? == 0 {
            bail!(
                "connection closed before the response head ended: {:?}",
                String::from_utf8_lossy(&buf)
            );
        }
        buf.push(byte[0]);
        if buf.ends_with(b"\r\n\r\n") {
            break buf.len();
        }
        if buf.len() > 64 * 1024 {
            bail!("response head too long");
        }
    };
    let text = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut status_parts = status_line.splitn(3, ' ');
    let _version = status_parts.next();
    let status = status_parts
        .next()
        .context("status line has no code")?
        .parse()?;
    let reason = status_parts.next().unwrap_or_default().to_owned();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(Handshake {
        status,
        reason,
        headers,
        client: RawClient {
            io: stream,
            buf: Vec::new(),
        },
    })
}

fn rand_bytes() -> [u8; 16] {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    nanos.to_le_bytes()
}

/// A frame-level client: masked writes, unmasked reads.
pub struct RawClient {
    /// The socket.
    pub io: Box<dyn Io>,
    buf: Vec<u8>,
}

impl std::fmt::Debug for RawClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawClient")
            .field("buffered", &self.buf.len())
            .finish()
    }
}

/// One frame as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    /// FIN bit.
    pub fin: bool,
    /// Opcode.
    pub opcode: OpCode,
    /// Payload.
    pub payload: Vec<u8>,
}

impl RawClient {
    /// Writes one masked frame.
    pub async fn send(&mut self, fin: bool, opcode: OpCode, payload: &[u8]) -> std::io::Result<()> {
        let mask = [0x11, 0x22, 0x33, 0x44];
        let mut head = [0u8; frame::MAX_HEADER_LEN];
        let n = FrameHeader {
            fin,
            opcode,
            mask: Some(mask),
            payload_len: payload.len() as u64,
        }
        .encode(&mut head);
        let mut body = payload.to_vec();
        frame::apply_mask(&mut body, mask, 0);
        self.io.write_all(&[&head[..n], &body[..]].concat()).await?;
        self.io.flush().await
    }

    /// Writes raw bytes (to send malformed frames).
    pub async fn send_bytes(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.io.write_all(bytes).await?;
        self.io.flush().await
    }

    /// Reads one frame; `Ok(None)` at EOF.
    pub async fn recv(&mut self) -> anyhow::Result<Option<RawFrame>> {
        loop {
            if let Some((h, n)) = FrameHeader::decode(&self.buf)? {
                let total = n + h.payload_len as usize;
                if self.buf.len() >= total {
                    let payload = self.buf[n..total].to_vec();
                    self.buf.drain(..total);
                    return Ok(Some(RawFrame {
                        fin: h.fin,
                        opcode: h.opcode,
                        payload,
                    }));
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            let got = self.io.read(&mut chunk).await?;
            if got == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    bail!("EOF inside a frame")
                };
            }
            self.buf.extend_from_slice(&chunk[..got]);
        }
    }
}

/// An HTTP answer read to EOF.
#[derive(Debug, Clone)]
pub struct HttpAnswer {
    /// Status code.
    pub status: u16,
    /// Reason phrase exactly as sent.
    pub reason: String,
    /// Response headers, lower-cased names.
    pub headers: Vec<(String, String)>,
    /// Everything after the head (still chunk-encoded if it was).
    pub body: Vec<u8>,
}

impl HttpAnswer {
    /// First value of a response header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Writes `request` whole, then reads the answer until EOF; the request should say
/// `Connection: close`.
pub async fn http_exchange(mut stream: Box<dyn Io>, request: &[u8]) -> anyhow::Result<HttpAnswer> {
    stream
        .write_all(request)
        .await
        .context("writing the request")?;
    stream.flush().await?;
    let mut all = Vec::new();
    stream
        .read_to_end(&mut all)
        .await
        .context("reading the answer")?;
    parse_answer(&all)
}

/// Splits an HTTP answer into status line, headers and the rest.
pub fn parse_answer(all: &[u8]) -> anyhow::Result<HttpAnswer> {
    let end = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .with_context(|| format!("no complete head in {:?}", String::from_utf8_lossy(all)))?;
    let text = String::from_utf8_lossy(&all[..end]).into_owned();
    let mut lines = text.split("\r\n");
    let mut status_parts = lines.next().unwrap_or_default().splitn(3, ' ');
    let _version = status_parts.next();
    let status = status_parts
        .next()
        .context("status line has no code")?
        .parse()?;
    let reason = status_parts.next().unwrap_or_default().to_owned();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(HttpAnswer {
        status,
        reason,
        headers,
        body: all[end + 4..].to_vec(),
    })
}
