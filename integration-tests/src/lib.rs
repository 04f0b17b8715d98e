//! Test harness for the whole chain on one machine: starts relays (in-process or the real
//! binary) on ports the OS picks, and offers clients that talk to them over real sockets:
//! tokio-tungstenite WebSockets, raw handshakes (to read status lines and reason phrases),
//! and a raw frame client (to do what tungstenite cannot, such as sending data after
//! receiving a Close).

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod arm;
pub mod browser;
pub mod external;
pub mod mem;
pub mod node;
pub mod python;
pub mod raw;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use hc_protocol::control::{AcceptCommand, Incoming, ServiceCommand};
use hc_protocol::{SasKey, SasToken};
use relay_server::{ConfigFile, Emulator, RelayOptions};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

/// A socket: plain TCP or TLS over TCP.
pub use hc_client::Io;

/// A tokio-tungstenite client socket.
pub type Ws = WebSocketStream<Box<dyn Io>>;

/// Routes logs to the test writer, shown only for failing tests (filter from `RUST_LOG`,
/// default `debug`).
pub fn init_logging() {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter: tracing_subscriber::filter::Targets = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| f.parse().ok())
        .unwrap_or_else(|| "debug".parse().unwrap());
    let _ = tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_test_writer())
        .with(filter)
        .try_init();
}

/// A relay started in-process with its clients' TLS settings.
#[derive(Debug)]
pub struct TestRelay {
    /// The running emulator.
    pub emulator: Emulator,
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// A rustls client configuration trusting exactly `ca_pem`.
pub fn client_tls(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// Splits `wss://host:port/...` into (tls, host, port).
pub fn url_parts(url: &str) -> (bool, String, u16) {
    let parts = hc_protocol::uri::parse(url).unwrap();
    let tls = matches!(parts.scheme, Some("wss") | Some("https"));
    (
        tls,
        parts.host.to_owned(),
        parts.port.unwrap_or(if tls { 443 } else { 80 }),
    )
}

impl TestRelay {
    /// Starts a relay with `config` (JSON) over TLS or plain.
    pub async fn start(config: &str, tls: bool, options: RelayOptions) -> Self {
        init_logging();
        let config = ConfigFile::parse(config).expect("test config parses");
        let emulator = Emulator::start(&config, tls, options)
            .await
            .expect("emulator starts");
        let tls = emulator.ca_pem.as_deref().map(client_tls);
        TestRelay { emulator, tls }
    }

    /// The zero-config relay with TLS.
    pub async fn default_tls() -> Self {
        Self::start("{}", true, RelayOptions::default()).await
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.emulator.addr.port()
    }

    /// `wss://{host}:{port}{path_and_query}` (or `ws://`).
    pub fn url(&self, host: &str, path_and_query: &str) -> String {
        let scheme = if self.tls.is_some() { "wss" } else { "ws" };
        format!("{scheme}://{host}:{}{path_and_query}", self.port())
    }

    /// Opens TCP (and TLS with `host` as server name) to the relay.
    pub async fn stream(&self, host: &str) -> anyhow::Result<Box<dyn Io>> {
        connect_stream(self.emulator.addr, self.tls.clone(), host.to_owned()).await
    }

    /// The primary key of a rule on a namespace (or one of its hybrid connections).
    pub fn key(&self, namespace: &str, hc: Option<&str>, rule: &str) -> SasKey {
        let model = self.emulator.relay.model();
        let ns = model.namespace(namespace).unwrap();
        let rules = match hc {
            Some(hc) => &ns.hybrid_connections[&hc.to_ascii_lowercase()].authorization_rules,
            None => &ns.authorization_rules,
        };
        rules
            .iter()
            .find(|r| r.0.name == rule)
            .unwrap()
            .0
            .primary_key
            .clone()
    }

    /// A token as the .NET SDK makes it: `http://{host}/{path}/`, valid for an hour.
    pub fn token(
        &self,
        host: &str,
        path: &str,
        namespace: &str,
        hc_rules: Option<&str>,
        rule: &str,
    ) -> String {
        let key = self.key(namespace, hc_rules, rule);
        SasToken::create(
            &format!("http://{host}/{path}/"),
            rule,
            &key,
            relay_server::now_unix() + 3600,
        )
        .expose()
    }

    /// The default namespace's Listen token for `hc` (its `defaultListener` rule).
    pub fn listen_token(&self, hc: &str) -> String {
        self.token("localhost", hc, "default", Some(hc), "defaultListener")
    }

    /// The default namespace's Send token for `hc` (its `defaultSender` rule).
    pub fn send_token(&self, hc: &str) -> String {
        self.token("localhost", hc, "default", Some(hc), "defaultSender")
    }

    /// A tokio-tungstenite client connection to `url` with extra headers.
    pub fn ws(
        &self,
        url: &str,
        headers: &[(&str, &str)],
    ) -> impl Future<Output = Result<Ws, tungstenite::Error>> + Send + use<> {
        let (addr, tls, url, headers) = (
            self.emulator.addr,
            self.tls.clone(),
            url.to_owned(),
            owned(headers),
        );
        async move {
            let (_, host, _) = url_parts(&url);
            let mut request = url.as_str().into_client_request()?;
            for (k, v) in &headers {
                request.headers_mut().append(
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    http::HeaderValue::from_str(v).unwrap(),
                );
            }
            let stream = connect_stream(addr, tls, host)
                .await
                .map_err(|e| tungstenite::Error::Io(std::io::Error::other(e.to_string())))?;
            let (ws, _) = tokio_tungstenite::client_async(request, stream).await?;
            Ok(ws)
        }
    }

    /// Opens a listener control channel for `hc` in the default namespace.
    pub async fn listen(&self, hc: &str) -> TestListener {
        let url = self.url(
            "localhost",
            &format!("/$hc/{hc}?sb-hc-action=listen&sb-hc-id=listener-{hc}"),
        );
        let control = self
            .ws(&url, &[("ServiceBusAuthorization", &self.listen_token(hc))])
            .await
            .expect("listener connects");
        TestListener { control }
    }

    /// A raw upgrade request to `url`; returns the status line's code and reason phrase,
    /// the response head, and the socket (still open after a 101).
    pub fn raw_upgrade(
        &self,
        url: &str,
        headers: &[(&str, &str)],
    ) -> impl Future<Output = anyhow::Result<raw::Handshake>> + Send + use<> {
        let (addr, tls, url, headers) = (
            self.emulator.addr,
            self.tls.clone(),
            url.to_owned(),
            owned(headers),
        );
        async move {
            let (_, host, _) = url_parts(&url);
            let stream = connect_stream(addr, tls, host).await?;
            let refs: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            raw::handshake(stream, &url, &refs).await
        }
    }
}

fn owned(headers: &[(&str, &str)]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

impl TestRelay {
    /// Opens TCP with a receive buffer of about `rcvbuf` bytes (to make a peer that stops
    /// reading block the relay's writes quickly), then TLS when the relay has it.
    pub async fn stream_with_rcvbuf(&self, host: &str, rcvbuf: u32) -> anyhow::Result<Box<dyn Io>> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_recv_buffer_size(rcvbuf)?;
        let tcp = socket.connect(self.emulator.addr).await?;
        match self.tls.clone() {
            None => Ok(Box::new(tcp)),
            Some(config) => Ok(Box::new(
                tokio_rustls::TlsConnector::from(config)
                    .connect(ServerName::try_from(host.to_owned())?, tcp)
                    .await?,
            )),
        }
    }

    /// Sends raw `request` bytes (with `Connection: close`) on a new connection and reads the
    /// whole answer.
    pub async fn http_raw(&self, request: &[u8]) -> anyhow::Result<raw::HttpAnswer> {
        let stream = self.stream("localhost").await?;
        raw::http_exchange(stream, request).await
    }
}

/// Opens TCP to `addr`, then TLS with `host` as server name when `tls` is set.
pub async fn connect_stream(
    addr: std::net::SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
    host: String,
) -> anyhow::Result<Box<dyn Io>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    match tls {
        None => Ok(Box::new(tcp)),
        Some(config) => {
            let name = ServerName::try_from(host)?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok(Box::new(tls))
        }
    }
}

/// A listener's control channel, driven by tokio-tungstenite.
pub struct TestListener {
    /// The control WebSocket.
    pub control: Ws,
}

impl std::fmt::Debug for TestListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TestListener")
    }
}

impl TestListener {
    /// The next `accept` command (skipping pings), or an error when the channel closes.
    pub async fn next_accept(&mut self) -> anyhow::Result<AcceptCommand> {
        match self.next_command().await? {
            ServiceCommand::Accept(a) => Ok(a),
            other => bail!("unexpected control message {other:?}"),
        }
    }

    /// The next command (skipping pings), or an error when the channel closes.
    pub async fn next_command(&mut self) -> anyhow::Result<ServiceCommand> {
        use futures_util::StreamExt as _;
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), self.control.next())
                .await
                .context("no command within 10 s")?;
            match msg {
                Some(Ok(Message::Text(text))) => match ServiceCommand::parse(&text)? {
                    Incoming::Known(c) => return Ok(c),
                    other => bail!("unexpected control message {other:?}"),
                },
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => bail!("control channel ended: {other:?}"),
            }
        }
    }

    /// Sends a text message (a JSON command) on the control channel.
    pub async fn send_text(&mut self, text: &str) -> anyhow::Result<()> {
        use futures_util::SinkExt as _;
        Ok(self.control.send(Message::text(text)).await?)
    }

    /// Joins the rendezvous of `accept`, asking for `protocol`.
    pub async fn join(
        &self,
        relay: &TestRelay,
        accept: &AcceptCommand,
        protocol: Option<&str>,
    ) -> Ws {
        let headers: Vec<(&str, &str)> = protocol
            .map(|p| ("Sec-WebSocket-Protocol", p))
            .into_iter()
            .collect();
        relay
            .ws(&accept.address, &headers)
            .await
            .expect("rendezvous succeeds")
    }
}

/// Reads the next data message, skipping control frames; errors on close or timeout.
pub async fn next_data(ws: &mut Ws) -> anyhow::Result<Message> {
    use futures_util::StreamExt as _;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .context("no message within 10 s")?
        {
            Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => return Ok(m),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => bail!("expected a data message, got {other:?}"),
        }
    }
}

/// Reads until the next Close frame and returns its code and reason.
pub async fn next_close(ws: &mut Ws) -> anyhow::Result<(u16, String)> {
    use futures_util::StreamExt as _;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .context("no close within 10 s")?
        {
            Some(Ok(Message::Close(Some(f)))) => {
                return Ok((u16::from(f.code), f.reason.to_string()));
            }
            Some(Ok(Message::Close(None))) => return Ok((1005, String::new())),
            Some(Ok(_)) => continue,
            other => bail!("expected a close frame, got {other:?}"),
        }
    }
}

/// A sample of `name` whose labels include all of `labels` in the Prometheus text `text`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
        .sum()
}
