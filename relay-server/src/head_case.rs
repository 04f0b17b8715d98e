//! Header names as the client spelled them. hyper lower-cases every header name and keeps no
//! public record of the original spelling, but listeners see `requestHeaders` and
//! `connectHeaders` (§5.2) and some of them compare names case-sensitively. So each HTTP
//! connection's socket is wrapped in [`CaptureIo`], which keeps a bounded copy of the bytes
//! read; when hyper hands over a request, [`HeadCapture::names`] finds that request's head in
//! the copy (by its request line), reads the names off it and drops the bytes up to its end.
//!
//! The copy stops for good once a connection is upgraded (tunnels carry frames, not heads),
//! so the data path pays one relaxed atomic load per read. When a head cannot be found (a
//! head that straddled the copy's bound, pipelined requests out of order), names fall back
//! to their usual capitalisation.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use hc_protocol::limits::MAX_HANDSHAKE_BYTES;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes of a connection's input kept: a whole head (at most `MAX_HANDSHAKE_BYTES`) plus as
/// much read-ahead again, plus slack.
const KEEP: usize = 3 * MAX_HANDSHAKE_BYTES;

/// The bytes a connection read recently, until it is upgraded.
#[derive(Debug, Default)]
pub(crate) struct HeadCapture {
    stopped: AtomicBool,
    bytes: Mutex<Vec<u8>>,
}

/// Original spellings by lower-case name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct HeaderNames(HashMap<String, String>);

impl HeaderNames {
    /// The name as the client wrote it, else in its usual capitalisation.
    pub(crate) fn spell(&self, lower: &str) -> String {
        self.0
            .get(lower)
            .cloned()
            .unwrap_or_else(|| title_case(lower))
    }
}

impl HeadCapture {
    fn record(&self, new: &[u8]) {
        if new.is_empty() || self.stopped.load(Ordering::Relaxed) {
            return;
        }
        let mut bytes = self.bytes.lock().unwrap_or_else(|p| p.into_inner());
        bytes.extend_from_slice(new);
        if bytes.len() > KEEP {
            let extra = bytes.len() - KEEP;
            bytes.drain(..extra);
        }
    }

    /// The header names of the request whose request line is `{method} {target} HTTP/1.x`;
    /// the bytes up to the end of its head are dropped.
    pub(crate) fn names(&self, method: &str, target: &str) -> HeaderNames {
        let mut bytes = self.bytes.lock().unwrap_or_else(|p| p.into_inner());
        let line = format!("{method} {target} HTTP/1.");
        let Some(start) = find(&bytes, line.as_bytes()) else {
            return HeaderNames::default();
        };
        let Some(len) = find(&bytes[start..], b"\r\n\r\n") else {
            return HeaderNames::default();
        };
        let head = &bytes[start..start + len];
        let mut names = HashMap::new();
        for raw in head.split(|b| *b == b'\n').skip(1) {
            if let Some(colon) = raw.iter().position(|b| *b == b':')
                && let Ok(name) = std::str::from_utf8(&raw[..colon])
                && !name.is_empty()
                && !name.contains(char::is_whitespace)
            {
                names
                    .entry(name.to_ascii_lowercase())
                    .or_insert_with(|| name.to_owned());
            }
        }
        bytes.drain(..start + len + 4);
        if bytes.is_empty() {
            *bytes = Vec::new();
        }
        HeaderNames(names)
    }

    /// Records `bytes` as if the connection had read them (tests of other modules).
    #[cfg(test)]
    pub(crate) fn record_for_test(&self, bytes: &[u8]) {
        self.record(bytes);
    }

    /// Stops copying (the connection was upgraded) and frees the copy.
    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
        *self.bytes.lock().unwrap_or_else(|p| p.into_inner()) = Vec::new();
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `sec-websocket-key` -> `Sec-WebSocket-Key`: the fallback spelling.
pub(crate) fn title_case(name: &str) -> String {
    name.split('-')
        .map(|part| match part {
            "websocket" => "WebSocket".to_owned(),
            p => {
                let mut c = p.chars();
                c.next()
                    .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                    .unwrap_or_default()
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// A socket whose reads are also recorded in a [`HeadCapture`].
#[derive(Debug)]
pub(crate) struct CaptureIo<IO> {
    io: IO,
    capture: Arc<HeadCapture>,
}

impl<IO> CaptureIo<IO> {
    /// Wraps `io`.
    pub(crate) fn new(io: IO, capture: Arc<HeadCapture>) -> Self {
        CaptureIo { io, capture }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for CaptureIo<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            this.capture.record(&buf.filled()[before..]);
        }
        polled
    }
}

hc_ws::delegate_async_write!([IO: AsyncWrite + Unpin] CaptureIo<IO>, io);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_matching_head_and_are_consumed() {
        let c = HeadCapture::default();
        c.record(b"POST /hc/a?x=1 HTTP/1.1\r\nHost: h\r\nx-MyHeader: 1\r\nX-MYHEADER: 2\r\nContent-Length: 3\r\n\r\nabc");
        c.record(b"GET /hc/b HTTP/1.1\r\nHOST: h\r\nSec-WebSocket-Key: k\r\n\r\n");
        let first = c.names("POST", "/hc/a?x=1");
        assert_eq!(first.spell("x-myheader"), "x-MyHeader");
        assert_eq!(first.spell("content-length"), "Content-Length");
        let second = c.names("GET", "/hc/b");
        assert_eq!(
            (second.spell("host"), second.spell("sec-websocket-key")),
            ("HOST".into(), "Sec-WebSocket-Key".into())
        );
        assert_eq!(
            second.spell("x-unseen-name"),
            "X-Unseen-Name",
            "unknown names fall back to title case"
        );
        assert!(c.bytes.lock().unwrap().is_empty());
    }

    #[test]
    fn a_missing_head_falls_back_and_the_copy_is_bounded() {
        let c = HeadCapture::default();
        c.record(&vec![b'x'; KEEP * 2]);
        assert_eq!(c.bytes.lock().unwrap().len(), KEEP);
        assert_eq!(c.names("GET", "/"), HeaderNames::default());
        c.stop();
        c.record(b"GET / HTTP/1.1\r\nA: b\r\n\r\n");
        assert!(
            c.bytes.lock().unwrap().is_empty(),
            "nothing is copied after an upgrade"
        );
    }

    #[test]
    fn title_case_spelling() {
        assert_eq!(title_case("sec-websocket-key"), "Sec-WebSocket-Key");
        assert_eq!(title_case("x-custom"), "X-Custom");
    }
}
