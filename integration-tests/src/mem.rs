//! The relay without sockets: a [`MemRelay`] serves connections that are in-memory pipes
//! (`tokio::io::duplex`), and hands clients a [`Connector`] that opens them. With no socket
//! anywhere, tokio's time can be paused: tokens expire, keep-alives fire and HTTP deadlines
//! pass in virtual time, and a test never sleeps to outwait one.
//!
//! Every connection passes a gate: [`MemRelay::freeze`] stops all of them carrying bytes (a
//! relay that hangs, as SIGSTOP would make it) and [`MemRelay::thaw`] lets them go on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};

use hc_client::relay::{Connector, RelayEndpoint};
use relay_server::{ConfigFile, Relay, RelayOptions};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::watch;

/// Bytes an in-memory connection buffers each way.
const PIPE: usize = 256 * 1024;

/// A relay serving in-memory connections.
#[derive(Debug, Clone)]
pub struct MemRelay {
    /// The relay.
    pub relay: Relay,
    next_port: Arc<AtomicU16>,
    gate: Arc<watch::Sender<bool>>,
}

impl MemRelay {
    /// A relay with `config` (JSON) applied to an in-memory model, plain HTTP.
    pub fn new(config: &str, options: RelayOptions) -> MemRelay {
        let config = ConfigFile::parse(config).expect("test config parses");
        MemRelay {
            relay: Relay::in_memory(&config, options).expect("config applies"),
            next_port: Arc::new(AtomicU16::new(40_000)),
            gate: Arc::new(watch::channel(true).0),
        }
    }

    /// A new connection to the relay: the client's end.
    pub fn connect(&self) -> DuplexStream {
        let (client, near) = tokio::io::duplex(PIPE);
        let (far, server) = tokio::io::duplex(PIPE);
        let peer = SocketAddr::from((
            [127, 0, 0, 1],
            self.next_port.fetch_add(1, Ordering::Relaxed),
        ));
        let (near_r, near_w) = tokio::io::split(near);
        let (far_r, far_w) = tokio::io::split(far);
        tokio::spawn(gated_copy(near_r, far_w, self.gate.subscribe()));
        tokio::spawn(gated_copy(far_r, near_w, self.gate.subscribe()));
        self.relay.serve_connection(server, peer);
        client
    }

    /// Stops every connection carrying bytes (they stay open).
    pub fn freeze(&self) {
        self.gate.send_replace(false);
    }

    /// Lets every connection carry bytes again.
    pub fn thaw(&self) {
        self.gate.send_replace(true);
    }

    /// Opens connections for `hc_client` (`RelayEndpoint::with_connector`).
    pub fn connector(&self) -> Connector {
        let me = self.clone();
        Connector::new(move |_, _| {
            let io = me.connect();
            Box::pin(async move { Ok(Box::new(io) as hc_client::BoxIo) })
        })
    }

    /// The default namespace as a client sees it: `ws://localhost/`, reached through
    /// [`MemRelay::connector`], signing tokens with the relay's clock.
    pub fn endpoint(&self) -> RelayEndpoint {
        let tls = hc_client::tls::client_config(None).expect("tls config");
        RelayEndpoint::from_endpoint("ws://localhost/", tls)
            .expect("endpoint")
            .with_connector(self.connector())
            .with_clock(self.clock())
    }

    /// The relay's clock.
    pub fn clock(&self) -> hc_client::Clock {
        self.relay.options().clock
    }

    /// A connection string of `rule` on hybrid connection `hc` of the default namespace.
    pub fn connection_string(&self, hc: &str, rule: &str) -> String {
        self.relay
            .connection_string("default", Some(hc), rule, "localhost")
            .expect("rule exists")
            .expose()
            .replacen("sb://", "ws://", 1)
    }
}

/// Copies `from` into `to` chunk by chunk, each chunk only while the gate is open.
async fn gated_copy(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    mut gate: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        if gate.wait_for(|open| *open).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Two namespaces for access tests: `alphans` (the default; `RootManageSharedAccessKey` with
/// key `alphans-manage-key`, `listen-only` with `alphans-listen-key`; hybrid connection `a1`)
/// and `betans` (hybrid connection `b1`).
pub const TWO_NAMESPACES: &str = r#"{"namespaces": [
    {"name": "alphans", "default": true,
     "authorizationRules": [
        {"name": "RootManageSharedAccessKey", "rights": ["Manage", "Listen", "Send"], "primaryKey": "alphans-manage-key"},
        {"name": "listen-only", "rights": ["Listen"], "primaryKey": "alphans-listen-key"}],
     "hybridConnections": [{"name": "a1"}]},
    {"name": "betans", "hybridConnections": [{"name": "b1"}]}]}"#;

/// A `ServiceBusAuthorization` header line with a token for `alphans` signed by `rule`'s
/// `key` (see [`TWO_NAMESPACES`]), valid for ten minutes.
pub fn alphans_token_header(rule: &str, key: &str) -> String {
    let key = hc_protocol::SasKey::new(key).expect("a valid key");
    let t = hc_protocol::SasToken::create(
        "http://alphans.localhost/",
        rule,
        &key,
        relay_server::now_unix() + 600,
    );
    format!("ServiceBusAuthorization: {}\r\n", t.expose())
}

/// One HTTP/1.1 request to `relay` over an in-memory pipe from the address `peer` (so a test
/// can be a client that is not on loopback): the status and the body. `headers` are whole
/// lines, each ending with CRLF.
pub async fn request_from(
    relay: &Relay,
    peer: [u8; 4],
    method: &str,
    host: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> (u16, String) {
    let (mut client, server) = tokio::io::duplex(1 << 20);
    relay.serve_connection(server, SocketAddr::from((peer, 40000)));
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    client
        .write_all(request.as_bytes())
        .await
        .expect("the relay reads the request");
    let mut raw = Vec::new();
    client
        .read_to_end(&mut raw)
        .await
        .expect("the relay answers");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}
