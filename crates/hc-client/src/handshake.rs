//! The client's HTTP/1.1 exchanges with the relay: the WebSocket upgrade (RFC 6455 §4.1),
//! written and parsed here, and the plain requests (runtime info, managed identity, ARM) on
//! hyper's client connection. Both report the status line *with its reason phrase* (hyper
//! keeps a non-canonical one in `hyper::ext::ReasonPhrase`), which is where the relay puts its
//! error text (PROTOCOL.md §9.1); bodies of any transfer encoding (chunked included) are read
//! by hyper.

use base64::Engine as _;
use bytes::BufMut as _;
use hc_protocol::frame;
use http::header::{self, HeaderName, HeaderValue};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _, ReadBuf};

use crate::BoxIo;
use crate::error::{Error, ErrorKind};

/// Largest runtime-info answer read.
const MAX_BODY: usize = 1024 * 1024;

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
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn of<B>(response: &http::Response<B>) -> Head {
        let status = response.status();
        let reason = match response.extensions().get::<hyper::ext::ReasonPhrase>() {
            Some(r) => String::from_utf8_lossy(r.as_bytes()).into_owned(),
            None => status.canonical_reason().unwrap_or_default().to_owned(),
        };
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        Head {
            status: status.as_u16(),
            reason,
            headers,
        }
    }
}

/// The relay's socket after a 101: the bytes read past the response head come first, then
/// the socket itself.
pub struct WsIo {
    early: Vec<u8>,
    at: usize,
    io: BoxIo,
}

impl WsIo {
    fn new(io: BoxIo, early: Vec<u8>) -> Self {
        WsIo { early, at: 0, io }
    }
}

impl std::fmt::Debug for WsIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsIo")
            .field("early", &(self.early.len() - self.at))
            .finish()
    }
}

impl AsyncRead for WsIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.at < this.early.len() {
            let n = buf.remaining().min(this.early.len() - this.at);
            buf.put_slice(&this.early[this.at..this.at + n]);
            this.at += n;
            if this.at == this.early.len() {
                this.early = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

hc_ws::delegate_async_write!([] WsIo, io);

/// An upgraded connection.
#[derive(Debug)]
pub struct WsStream {
    /// The socket, positioned at the first frame.
    pub io: WsIo,
    /// Sub-protocol the server chose.
    pub protocol: Option<String>,
}

/// A network failure while `what`.
fn network(what: &str, e: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Network, format!("{what}: {e}"))
}

/// A request with a method and a body (`Content-Length` set by hyper).
fn with_body(
    method: http::Method,
    target: &str,
    authority: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<http::Request<Full<Bytes>>, Error> {
    let mut request = http::Request::builder()
        .method(method)
        .uri(target)
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| {
            Error::new(
                ErrorKind::Config,
                format!("bad request target '{target}': {e}"),
            )
        })?;
    let h = request.headers_mut();
    let bad = |what: &str| Error::new(ErrorKind::Config, format!("bad header {what}"));
    h.insert(
        header::HOST,
        HeaderValue::from_str(authority).map_err(|_| bad("Host"))?,
    );
    for (k, v) in headers {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).map_err(|_| bad(k))?,
            HeaderValue::from_str(v).map_err(|_| bad(k))?,
        );
    }
    Ok(request)
}

/// Sends a WebSocket upgrade for `target` (path and query) with `Host: authority`. A 101 is
/// checked (`Sec-WebSocket-Accept`) and returned as a stream; any other status comes back as
/// the head (its body is not read).
///
/// Written and parsed here rather than on hyper's client: a tunnel is opened by one upgrade
/// on each side, and hyper's connection task, its channels and the upgrade hand-over cost a
/// task and several wake-ups per tunnel (issue 16's profile of opening tunnels). Header names
/// go out as the caller spells them.
pub async fn upgrade(
    mut io: BoxIo,
    target: &str,
    authority: &str,
    headers: &[(&str, &str)],
) -> Result<Result<WsStream, Head>, Error> {
    let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
    let request = upgrade_request(target, authority, headers, &key)?;
    io.write_all(request.as_bytes())
        .await
        .map_err(|e| network("sending the upgrade", e))?;
    io.flush()
        .await
        .map_err(|e| network("sending the upgrade", e))?;
    let (head, early) = read_head(&mut io).await?;
    if head.status != 101 {
        return Ok(Err(head));
    }
    if head.header("sec-websocket-accept") != Some(frame::accept_key(&key).as_str()) {
        return Err(Error::new(
            ErrorKind::Protocol,
            "relay answered 101 with a wrong Sec-WebSocket-Accept",
        ));
    }
    let protocol = head.header("sec-websocket-protocol").map(str::to_owned);
    Ok(Ok(WsStream {
        io: WsIo::new(io, early),
        protocol,
    }))
}

/// Largest response head read from the relay.
const MAX_HEAD: usize = 64 * 1024;

/// The request head of an upgrade; a target, authority or header that would break the head
/// (a control character, a space in the target, a bad header name) is refused by name.
fn upgrade_request(
    target: &str,
    authority: &str,
    headers: &[(&str, &str)],
    key: &str,
) -> Result<String, Error> {
    let bad = |what: &str| Error::new(ErrorKind::Config, format!("bad {what}"));
    if target.is_empty() || target.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(bad(&format!("request target '{}'", target.escape_debug())));
    }
    if !field_value(authority) {
        return Err(bad("header Host"));
    }
    let mut out = format!(
        "GET {target} HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n"
    );
    for (name, value) in headers {
        if HeaderName::from_bytes(name.as_bytes()).is_err() || !field_value(value) {
            return Err(bad(&format!("header {name}")));
        }
        out.push_str(name);
        out.push_str(": ");
        out.push_str(value);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    Ok(out)
}

/// Whether `v` may be sent as a header value (RFC 9110 §5.5: no control characters but tab).
fn field_value(v: &str) -> bool {
    HeaderValue::from_str(v).is_ok()
}

/// Reads a response head; the bytes read after it are returned too (the first frames).
async fn read_head(io: &mut BoxIo) -> Result<(Head, Vec<u8>), Error> {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    loop {
        // Parsed outside this future: httparse's header slots (2 KiB) are not kept across
        // the read below, so the tunnel task that awaits an upgrade stays small.
        if let Some((head, n)) = parse_head(&buf)? {
            return Ok((head, buf.split_off(n)));
        }
        if buf.len() >= MAX_HEAD {
            return Err(Error::new(
                ErrorKind::Protocol,
                format!("the relay's answer head is over {MAX_HEAD} bytes"),
            ));
        }
        let room = MAX_HEAD - buf.len();
        let n = io
            .read_buf(&mut (&mut buf).limit(room))
            .await
            .map_err(|e| network("reading the relay's answer", e))?;
        if n == 0 {
            return Err(Error::new(
                ErrorKind::Network,
                "the relay closed the connection before answering",
            ));
        }
    }
}

/// The response head at the start of `buf` and its length, or `None` while it is partial.
fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, Error> {
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut slots);
    match response.parse(buf) {
        Ok(httparse::Status::Complete(n)) => Ok(Some((
            Head {
                status: response.code.unwrap_or_default(),
                reason: response.reason.unwrap_or_default().to_owned(),
                headers: response
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect(),
            },
            n,
        ))),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(Error::new(
            ErrorKind::Protocol,
            format!("the relay's answer is not HTTP/1.1: {e}"),
        )),
    }
}

/// Sends a GET and reads the whole response (at most 1 MiB of body).
pub async fn http_get(
    io: BoxIo,
    target: &str,
    authority: &str,
    headers: &[(&str, &str)],
) -> Result<(Head, Vec<u8>), Error> {
    http_request(
        io,
        http::Method::GET,
        target,
        authority,
        headers,
        Vec::new(),
    )
    .await
}

/// Sends one request and reads the whole response (at most 1 MiB of body).
pub async fn http_request(
    io: BoxIo,
    method: http::Method,
    target: &str,
    authority: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<(Head, Vec<u8>), Error> {
    let req = with_body(method, target, authority, headers, body)?;
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .title_case_headers(true)
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| network("starting the request", e))?;
    let conn = tokio::spawn(conn);
    let response = sender
        .send_request(req)
        .await
        .map_err(|e| network("the relay closed the connection before answering", e))?;
    let head = Head::of(&response);
    let body = Limited::new(response.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| {
            Error::new(
                ErrorKind::Protocol,
                format!("reading the relay's answer: {e}"),
            )
        })?
        .to_bytes();
    drop(sender);
    conn.abort();
    Ok((head, body.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `upgrade` against a peer that reads the request head and answers `answer` (with
    /// `{accept}` replaced by the right Sec-WebSocket-Accept); the result and the request.
    async fn against(
        answer: &'static [u8],
        headers: &[(&str, &str)],
    ) -> (Result<Result<WsStream, Head>, Error>, String) {
        let (client, mut server) = tokio::io::duplex(256 * 1024);
        let peer = tokio::spawn(async move {
            let mut got = Vec::new();
            while !got.ends_with(b"\r\n\r\n") {
                let mut b = [0u8; 1];
                if server.read(&mut b).await.unwrap_or(0) == 0 {
                    break;
                }
                got.push(b[0]);
            }
            let text = String::from_utf8(got).unwrap_or_default();
            let key = text
                .lines()
                .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                .unwrap_or_default()
                .to_owned();
            let mut answer = answer.to_vec();
            if let Some(at) = answer.windows(8).position(|w| w == b"{accept}") {
                answer.splice(at..at + 8, frame::accept_key(&key).into_bytes());
            }
            let _ = server.write_all(&answer).await;
            let _ = server.shutdown().await;
            (text, server)
        });
        let result = upgrade(Box::new(client), "/$hc/a?x=1", "h:9", headers).await;
        let (text, _server) = peer.await.unwrap();
        (result, text)
    }

    #[tokio::test]
    async fn a_101_hands_over_the_bytes_read_past_the_head() {
        let (result, request) = against(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n\x82\x03abc",
            &[("ServiceBusAuthorization", "SharedAccessSignature sr=x")],
        )
        .await;
        assert!(request.starts_with("GET /$hc/a?x=1 HTTP/1.1\r\nHost: h:9\r\n"));
        assert!(request.contains("\r\nServiceBusAuthorization: SharedAccessSignature sr=x\r\n"));
        let mut ws = result.unwrap().unwrap();
        let mut first = [0u8; 5];
        ws.io.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"\x82\x03abc");
        let mut rest = Vec::new();
        ws.io.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn other_answers_keep_status_reason_and_headers() {
        let (result, _) = against(
            b"HTTP/1.1 404 EndpointNotFound: no such hybrid connection. TrackingId:x\r\nContent-Length: 5\r\nX-Thing: y\r\n\r\nhello",
            &[],
        )
        .await;
        let head = result.unwrap().unwrap_err();
        assert_eq!(head.status, 404);
        assert_eq!(
            head.reason,
            "EndpointNotFound: no such hybrid connection. TrackingId:x"
        );
        assert_eq!(head.header("x-thing"), Some("y"));
    }

    #[tokio::test]
    async fn broken_answers_are_errors_that_say_what_happened() {
        let (closed, _) = against(b"", &[]).await;
        let e = closed.unwrap_err();
        assert_eq!(*e.kind(), ErrorKind::Network);
        assert!(
            e.to_string()
                .contains("closed the connection before answering"),
            "{e}"
        );
        let (garbage, _) = against(b"SSH-2.0-OpenSSH\r\n\r\n", &[]).await;
        let e = garbage.unwrap_err();
        assert_eq!(*e.kind(), ErrorKind::Protocol);
        assert!(e.to_string().contains("not HTTP/1.1"), "{e}");
        let (wrong, _) = against(
            b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: nope\r\n\r\n",
            &[],
        )
        .await;
        assert!(
            wrong
                .unwrap_err()
                .to_string()
                .contains("Sec-WebSocket-Accept")
        );
        let huge: &'static [u8] = Box::leak(
            format!("HTTP/1.1 200 OK\r\nX: {}\r\n", "a".repeat(70 * 1024))
                .into_bytes()
                .into_boxed_slice(),
        );
        let (huge, _) = against(huge, &[]).await;
        assert!(huge.unwrap_err().to_string().contains("over 65536 bytes"));
    }

    /// A tunnel task is as large as its largest await point, for the tunnel's whole life:
    /// the upgrade it awaits first must stay small (httparse's 64 header slots held across
    /// a read made every idle tunnel of the HCM and the shim 0.8 KiB larger, issue 16).
    #[test]
    fn an_upgrade_in_progress_is_a_small_future() {
        let (a, _b) = tokio::io::duplex(64);
        let upgrading = upgrade(Box::new(a), "/x", "h", &[]);
        let size = std::mem::size_of_val(&upgrading);
        assert!(size <= 1024, "{size} bytes");
    }

    #[tokio::test]
    async fn headers_that_would_break_the_request_are_refused_by_name() {
        let (a, _) = tokio::io::duplex(1024);
        let e = upgrade(Box::new(a), "/x", "h", &[("X-Evil", "a\r\nInjected: 1")])
            .await
            .unwrap_err();
        assert_eq!(*e.kind(), ErrorKind::Config);
        assert!(e.to_string().contains("header X-Evil"), "{e}");
        let (a, _) = tokio::io::duplex(1024);
        let e = upgrade(Box::new(a), "/x y", "h", &[]).await.unwrap_err();
        assert!(e.to_string().contains("request target"), "{e}");
        let (a, _) = tokio::io::duplex(1024);
        let e = upgrade(Box::new(a), "/x", "h", &[("Bad Name", "v")])
            .await
            .unwrap_err();
        assert!(e.to_string().contains("header Bad Name"), "{e}");
    }
}
