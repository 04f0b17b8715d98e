//! Runs the `relay-server` binary exactly as a user would: a fresh data directory, an OS-chosen
//! port, the printed connection strings and CA file; then kill -9 and a restart that keeps
//! every key; SIGTERM; and a broken config file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::sync::Arc;

use futures_util::{SinkExt as _, StreamExt as _};
use hc_emulator::procs::{self, Proc, Signal};
use hc_protocol::{ConnectionString, Credential, SasToken};
use rustls::pki_types::ServerName;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// What the banner told us.
struct Banner {
    port: u16,
    ca_file: String,
    listen: String,
    send: String,
    manage: String,
}

fn start(data_dir: &std::path::Path, extra: &[&str]) -> (Proc, Banner) {
    let (child, stdout) = start_raw(data_dir, extra);
    // Stdout is a pipe here, so the banner names the keys file instead of printing keys.
    assert!(
        !stdout.contains("SharedAccessKey="),
        "no key on a stdout that is not a terminal:\n{stdout}"
    );
    let keys_file = stdout
        .lines()
        .find_map(|l| l.strip_prefix("Connection strings: "))
        .expect("the banner names the keys file");
    let keys_file = keys_file.trim_end_matches(" (mode 0600)");
    #[cfg(unix)]
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(keys_file).unwrap().permissions()
        ) & 0o777,
        0o600
    );
    let keys = std::fs::read_to_string(keys_file).unwrap();
    let (mut port, mut ca_file, mut listen, mut send, mut manage) = (
        0,
        String::new(),
        String::new(),
        String::new(),
        String::new(),
    );
    for line in stdout.lines().chain(keys.lines()) {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("Azure Relay Hybrid Connections emulator listening on ")
        {
            port = rest
                .split_whitespace()
                .next()
                .unwrap()
                .rsplit(':')
                .next()
                .unwrap()
                .parse()
                .unwrap();
        } else if let Some(rest) = t.strip_prefix("CA certificate: ") {
            ca_file = rest.to_owned();
        } else if let Some(rest) = t.strip_prefix("Listen ") {
            listen = rest.trim().to_owned();
        } else if let Some(rest) = t.strip_prefix("Send ") {
            send = rest.trim().to_owned();
        } else if t.contains("SharedAccessKeyName=RootManageSharedAccessKey") {
            manage = t
                .split_once("Endpoint=")
                .map(|(_, cs)| format!("Endpoint={cs}"))
                .unwrap();
        }
    }
    assert!(
        port > 0 && !listen.is_empty() && !send.is_empty() && !manage.is_empty(),
        "banner incomplete"
    );
    (
        child,
        Banner {
            port,
            ca_file,
            listen,
            send,
            manage,
        },
    )
}

/// Starts the binary and returns what it printed up to "Ready.".
fn start_raw(data_dir: &std::path::Path, extra: &[&str]) -> (Proc, String) {
    std::fs::create_dir_all(data_dir).unwrap();
    let mut args = vec![
        "--data-dir",
        procs::path(data_dir),
        "--listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    let (relay, lines) = Proc::start(
        &procs::binary("relay-server").unwrap(),
        &args,
        data_dir.join("relay.log"),
        Some("Ready."),
    )
    .unwrap();
    (relay, lines.join("\n") + "\n")
}

fn tls_for(ca_file: &str) -> Arc<rustls::ClientConfig> {
    integration_tests::client_tls(&std::fs::read_to_string(ca_file).unwrap())
}

/// Connects like an SDK would from a connection string: token for `http://{host}/{hc}/`.
async fn connect(
    tls: Arc<rustls::ClientConfig>,
    port: u16,
    cs: &str,
    action: &str,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    String,
> {
    let cs = ConnectionString::parse(cs).unwrap();
    let hc = cs.entity_path.clone().unwrap();
    let Some(Credential::Key { name, key }) = &cs.credential else {
        panic!("key credential expected")
    };
    let host = cs.namespace_host();
    let token = SasToken::create(
        &format!("http://{host}/{hc}/"),
        name,
        key,
        relay_server::now_unix() + 600,
    )
    .expose();
    let url = format!(
        "wss://{host}:{}/$hc/{hc}?sb-hc-action={action}",
        cs.port().unwrap()
    );
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("ServiceBusAuthorization", token.parse().unwrap());
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(ServerName::try_from(host).unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    tokio_tungstenite::client_async(request, stream)
        .await
        .map(|(ws, _)| ws)
        .map_err(|e| e.to_string())
}

/// Listener and sender from the printed strings exchange a message through the relay.
async fn round_trip(b: &Banner) {
    let tls = tls_for(&b.ca_file);
    let mut control = connect(tls.clone(), b.port, &b.listen, "listen")
        .await
        .unwrap();
    let sender = tokio::spawn({
        let (tls, port, send) = (tls.clone(), b.port, b.send.clone());
        async move { connect(tls, port, &send, "connect").await }
    });
    let accept = loop {
        if let Message::Text(t) = control.next().await.unwrap().unwrap() {
            break t;
        }
    };
    let accept: serde_json::Value = serde_json::from_str(&accept).unwrap();
    let address = accept["accept"]["address"].as_str().unwrap().to_owned();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", b.port))
        .await
        .unwrap();
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (mut rendezvous, _) = tokio_tungstenite::client_async(address.as_str(), stream)
        .await
        .unwrap();
    let mut sender = sender.await.unwrap().unwrap();
    sender
        .send(Message::text("through the binary"))
        .await
        .unwrap();
    assert_eq!(
        rendezvous.next().await.unwrap().unwrap(),
        Message::text("through the binary")
    );
}

#[tokio::test]
async fn zero_config_start_survives_kill_9_with_the_same_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, first) = start(dir.path(), &[]);
    assert!(
        first.listen.ends_with(";EntityPath=sample")
            && first.listen.contains("SharedAccessKeyName=defaultListener"),
        "{}",
        first.listen
    );
    assert!(first.send.contains("SharedAccessKeyName=defaultSender"));
    round_trip(&first).await;
    child.kill();

    let ca_before = std::fs::read_to_string(&first.ca_file).unwrap();
    let (mut child, second) = start(dir.path(), &[]);
    let keys = |cs: &str| cs.split(';').skip(1).map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(
        (
            keys(&second.listen),
            keys(&second.send),
            keys(&second.manage)
        ),
        (keys(&first.listen), keys(&first.send), keys(&first.manage))
    );
    assert_eq!(
        std::fs::read_to_string(&second.ca_file).unwrap(),
        ca_before,
        "the CA is reused"
    );
    // The first run's strings (old port aside) still authenticate.
    let old_listen = first
        .listen
        .replace(&first.port.to_string(), &second.port.to_string());
    let old_send = first
        .send
        .replace(&first.port.to_string(), &second.port.to_string());
    round_trip(&Banner {
        listen: old_listen,
        send: old_send,
        ..second
    })
    .await;
    child.kill();
}

#[tokio::test]
async fn sigterm_shuts_down_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (child, b) = start(dir.path(), &[]);
    let tls = tls_for(&b.ca_file);
    let mut control = connect(tls, b.port, &b.listen, "listen").await.unwrap();
    child.signal(Signal::TERM).unwrap();
    let close = loop {
        match control.next().await {
            Some(Ok(Message::Close(f))) => break f.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(close, Some(1001));
    let status = tokio::task::spawn_blocking(move || {
        let mut child = child;
        child.wait().unwrap()
    })
    .await
    .unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn config_file_is_applied_and_errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relay.json");
    std::fs::write(
        &config,
        r#"{"namespaces":[{"name":"contoso","default":true,"hybridConnections":[{"name":"db","endpoint":"localhost:5432"}]}]}"#,
    )
    .unwrap();
    let (mut child, b) = start(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    assert!(b.listen.ends_with(";EntityPath=db"), "{}", b.listen);
    child.kill();

    std::fs::write(
        &config,
        r#"{"namespaces":[{"name":"contoso","hybridConections":[]}]}"#,
    )
    .unwrap();
    let out = Command::new(procs::binary("relay-server").unwrap())
        .args([
            "--data-dir",
            dir.path().join("data2").to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("relay.json is invalid") && err.contains("hybridConections"),
        "{err}"
    );
}

/// A kill -9 in the middle of writing the server key left a key and certificate that do not
/// match (the relay then refused to start), and temporary files holding keys; both are
/// handled at the next start.
#[tokio::test]
async fn a_start_after_an_interrupted_write_repairs_the_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, first) = start(dir.path(), &[]);
    child.kill();
    // What an interrupted reissue leaves: a new key next to the old certificate, and the
    // temporary file of a process that is gone.
    let other_key = rcgen::KeyPair::generate().unwrap().serialize_pem();
    std::fs::write(dir.path().join("server-key.pem"), &other_key).unwrap();
    let stale = dir
        .path()
        .join(format!(".server-key.pem.{}.tmp", u32::MAX - 1));
    std::fs::write(&stale, &other_key).unwrap();
    let (mut child, second) = start(dir.path(), &[]);
    assert!(!stale.exists(), "the stale temporary file is removed");
    assert_eq!(
        std::fs::read_to_string(&second.ca_file).unwrap(),
        std::fs::read_to_string(&first.ca_file).unwrap(),
        "same CA"
    );
    round_trip(&second).await;
    child.kill();
}

/// `--quiet-keys` keeps keys off stdout (they are in the file either way).
#[test]
fn quiet_keys_prints_no_key() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, stdout) = start_raw(dir.path(), &["--quiet-keys"]);
    assert!(
        !stdout.contains("SharedAccessKey=") && stdout.contains("Hybrid connection sample"),
        "{stdout}"
    );
    assert!(
        std::fs::read_to_string(dir.path().join("connection-strings.txt"))
            .unwrap()
            .contains("SharedAccessKey=")
    );
    child.kill();
}

/// Durations that would overflow a deadline (or make no sense) are refused, naming the flag.
#[test]
fn timing_flags_are_validated() {
    let dir = tempfile::tempdir().unwrap();
    for (flag, value) in [
        ("--rendezvous-timeout", "18446744073709551615"),
        ("--rendezvous-timeout", "0"),
        ("--http-timeout", "18446744073709551615"),
        ("--token-grace", "18446744073709551615"),
        ("--listener-keepalive", "18446744073709551615"),
        ("--shutdown-grace", "18446744073709551615"),
        ("--max-connections-per-namespace", "0"),
    ] {
        let out = Command::new(procs::binary("relay-server").unwrap())
            .args([
                "--data-dir",
                dir.path().to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
                flag,
                value,
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.code() == Some(2) && err.contains(flag),
            "{flag} {value}: {err}"
        );
    }
}
