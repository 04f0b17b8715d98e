//! The client's HTTP/1.1 exchanges with the relay, on hyper's client connection: the
//! WebSocket upgrade (RFC 6455 §4.1) and the plain GET of runtime info. Both report the
//! status line *with its reason phrase* (hyper keeps a non-canonical one in
//! `hyper::ext::ReasonPhrase`), which is where the relay puts its error text (PROTOCOL.md
//! §9.1); bodies of any transfer encoding (chunked included) are read by hyper.

use base64::Engine as _;
use hc_protocol::frame;
use http::header::{self, HeaderName, HeaderValue};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

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

/// The relay's socket after a 101.
pub type WsIo = TokioIo<hyper::upgrade::Upgraded>;

/// An upgraded connection.
#[derive(Debug)]
pub struct WsStream {
    /// The socket, positioned at the first frame.
    pub io: WsIo,
    /// Sub-protocol the server chose.
    pub protocol: Option<String>,
}

fn network(what: &str, e: hyper::Error) -> Error {
    Error::new(ErrorKind::Network, format!("{what}: {e}"))
}

/// A request for `target` with `Host: authority` and `headers`.
fn request(
    target: &str,
    authority: &str,
    headers: &[(&str, &str)],
) -> Result<http::Request<Full<Bytes>>, Error> {
    with_body(http::Method::GET, target, authority, headers, Vec::new())
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
/// the head.
pub async fn upgrade(
    io: BoxIo,
    target: &str,
    authority: &str,
    headers: &[(&str, &str)],
) -> Result<Result<WsStream, Head>, Error> {
    let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
    let mut req = request(target, authority, headers)?;
    let h = req.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(
        header::SEC_WEBSOCKET_VERSION,
        HeaderValue::from_static("13"),
    );
    h.insert(
        header::SEC_WEBSOCKET_KEY,
        HeaderValue::from_str(&key).map_err(|_| Error::new(ErrorKind::Protocol, "bad key"))?,
    );
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .title_case_headers(true)
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| network("starting the handshake", e))?;
    // The connection runs on its own until it hands the socket to the upgrade.
    tokio::spawn(conn.with_upgrades());
    let response = sender
        .send_request(req)
        .await
        .map_err(|e| network("the relay closed the connection before answering", e))?;
    if response.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        return Ok(Err(Head::of(&response)));
    }
    let head = Head::of(&response);
    if head.header("sec-websocket-accept") != Some(frame::accept_key(&key).as_str()) {
        return Err(Error::new(
            ErrorKind::Protocol,
            "relay answered 101 with a wrong Sec-WebSocket-Accept",
        ));
    }
    let protocol = head.header("sec-websocket-protocol").map(str::to_owned);
    let upgraded = hyper::upgrade::on(response)
        .await
        .map_err(|e| network("upgrading", e))?;
    Ok(Ok(WsStream {
        io: TokioIo::new(upgraded),
        protocol,
    }))
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
