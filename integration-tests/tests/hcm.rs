//! The HCM as a user runs it: the `hcm` binary with a temporary data directory, a relay
//! (in-process, persistent, so it can be restarted on the same port with the same keys and
//! CA), a real TCP echo server as endpoint, and senders built on hc-client.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use hc_client::handshake::WsIo;
use hc_client::relay::RelayEndpoint;
use hc_client::token::TokenProvider;
use hc_emulator::procs::{self, Proc};
use hc_emulator::servers;
use hc_protocol::frame::{CloseFrame, OpCode};
use hc_protocol::metadata::Endpoint;
use hc_ws::{Config, Item, Reader, Role, Writer};
use hcm::status::{HcStatus, State, StatusFile};
use relay_server::{Relay, RelayOptions};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::TcpListener;

/// A relay from a data directory, serving on `listener`.
struct TestRelay {
    relay: Relay,
    addr: SocketAddr,
    dir: PathBuf,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl TestRelay {
    async fn start(dir: &Path, listener: TcpListener, options: RelayOptions) -> TestRelay {
        let relay = Relay::open(dir, None, false, options).unwrap();
        let addr = listener.local_addr().unwrap();
        let serving = relay.clone();
        let task =
            tokio::spawn(async move { serving.serve(listener, std::future::pending()).await });
        TestRelay {
            relay,
            addr,
            dir: dir.to_owned(),
            task,
        }
    }

    async fn stop(self) {
        self.relay.shutdown();
        self.task.await.unwrap().unwrap();
    }

    fn authority(&self) -> String {
        format!("localhost:{}", self.addr.port())
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A hybrid connection whose userMetadata names `endpoint`.
    fn hybrid_connection(&self, name: &str, endpoint: SocketAddr) {
        let metadata = Endpoint {
            host: endpoint.ip().to_string(),
            port: endpoint.port(),
        }
        .to_user_metadata();
        self.relay
            .put_hybrid_connection("default", name, true, Some(metadata))
            .unwrap();
    }

    fn listen_string(&self, hc: &str) -> String {
        self.relay
            .connection_string("default", Some(hc), "defaultListener", &self.authority())
            .unwrap()
            .expose()
    }

    fn listeners(&self, hc: &str) -> usize {
        self.relay.listener_count("default", hc)
    }

    /// Sends `data` through `hc` as a sender, half-closes, and returns everything echoed back.
    async fn echo(&self, hc: &str, data: &[u8]) -> Result<Vec<u8>, hc_client::Error> {
        let (reader, mut writer) = self.sender(hc).await?;
        for chunk in data.chunks(64 * 1024) {
            writer.send(OpCode::Binary, chunk).await.unwrap();
        }
        writer.close(&CloseFrame::new(1000, "")).await.unwrap();
        Ok(read_until_close(reader).await)
    }

    /// A sender's endpoint on `hc`.
    async fn sender(
        &self,
        hc: &str,
    ) -> Result<(Reader<ReadHalf<WsIo>>, Writer<WriteHalf<WsIo>>), hc_client::Error> {
        let ws = self.connect(hc).await?;
        Ok(hc_ws::split(ws.io, Config::new(Role::Client)))
    }

    async fn connect(&self, hc: &str) -> Result<hc_client::handshake::WsStream, hc_client::Error> {
        let tls = hc_client::tls::client_config(Some(&self.ca_file())).unwrap();
        let endpoint =
            RelayEndpoint::from_endpoint(&format!("sb://{}/", self.authority()), tls).unwrap();
        let cs = self
            .relay
            .connection_string("default", Some(hc), "defaultSender", &self.authority())
            .unwrap();
        let tokens = TokenProvider::from_connection_string(&cs, Duration::from_secs(600));
        hc_client::sender::connect(
            &endpoint,
            hc,
            &tokens,
            &hc_protocol::tracking::guid_from_bytes(rand::random()),
        )
        .await
    }
}

/// The data received until the relay's Close (control frames skipped).
async fn read_until_close<R: tokio::io::AsyncRead + Unpin>(mut reader: Reader<R>) -> Vec<u8> {
    let mut got = Vec::new();
    loop {
        match reader
            .next_item()
            .await
            .unwrap()
            .expect("relay closed without a close frame")
        {
            Item::Close(_) => return got,
            Item::Data(h) => {
                let mut done = 0;
                while done < h.payload_len {
                    got.extend_from_slice(reader.data_chunk(&h, &mut done).await.unwrap());
                }
            }
            Item::Ping | Item::Pong => {}
        }
    }
}

fn hcm(dir: &Path) -> Command {
    let mut c = Command::new(procs::binary("hcm").unwrap());
    c.arg("--data-dir").arg(dir);
    c
}

fn run_cli(dir: &Path, args: &[&str]) -> Output {
    hcm(dir).args(args).stdin(Stdio::null()).output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `hcm run` as a child process, killed on drop; its log goes to `{dir}/hcm.log`.
struct Service;

impl Service {
    #[allow(clippy::new_ret_no_self)]
    fn start(dir: &Path, extra: &[&str]) -> Proc {
        let data = dir.to_str().unwrap();
        let mut args = vec![
            "--data-dir",
            data,
            "run",
            "--min-backoff",
            "0.05",
            "--max-backoff",
            "0.3",
        ];
        args.extend_from_slice(extra);
        Proc::start_logging(
            &procs::binary("hcm").unwrap(),
            &args,
            dir.join("hcm.log"),
            None,
            "debug",
        )
        .unwrap()
        .0
    }
}

/// Waits for `what` to become true (checks every 20 ms, fails after 20 s).
async fn eventually(what: &str, dir: Option<&Path>, mut f: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = dir
        .and_then(|d| std::fs::read_to_string(d.join("hcm.log")).ok())
        .unwrap_or_default();
    panic!("timed out waiting for: {what}\nhcm log:\n{log}");
}

fn status(dir: &Path, hc: &str) -> Option<HcStatus> {
    StatusFile::read_live(dir)?
        .connections
        .get(&format!("localhost/{hc}"))
        .cloned()
}

async fn relay_with(options: RelayOptions) -> (TestRelay, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(
        dir.path(),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        options,
    )
    .await;
    (relay, dir)
}

/// A relay whose hybrid connection `db` names a TCP echo server, and an HCM data directory
/// (`home`) with `db` added, as most tests start.
async fn relay_with_db(options: RelayOptions) -> (TestRelay, tempfile::TempDir, tempfile::TempDir) {
    let (relay, relay_dir) = relay_with(options).await;
    let echo = servers::echo_server().await;
    relay.hybrid_connection("db", echo);
    let home = tempfile::tempdir().unwrap();
    assert!(add(home.path(), &relay, "db", &[]).status.success());
    (relay, relay_dir, home)
}

fn add(dir: &Path, relay: &TestRelay, hc: &str, extra: &[&str]) -> Output {
    let cs = relay.listen_string(hc);
    let ca = relay.ca_file();
    let mut args = vec!["add", cs.as_str(), "--ca-file", ca.to_str().unwrap()];
    args.extend_from_slice(extra);
    run_cli(dir, &args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_verbs_and_a_tunnel_through_relay_and_hcm() {
    let (relay, _rd) = relay_with(RelayOptions::default()).await;
    let echo = servers::echo_server().await;
    relay.hybrid_connection("db", echo);
    let home = tempfile::tempdir().unwrap();
    let dir = home.path();

    let out = add(dir, &relay, "db", &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout(&out).contains(&format!("Endpoint {echo} (from userMetadata)")),
        "{}",
        stdout(&out)
    );
    assert!(stdout(&out).contains("Added localhost/db"));
    let config = std::fs::read_to_string(dir.join("connections.json")).unwrap();
    assert!(config.contains("EntityPath=db"));
    #[cfg(unix)]
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.join("connections.json"))
                .unwrap()
                .permissions()
        ) & 0o777,
        0o600
    );
    let listed = stdout(&run_cli(dir, &["list"]));
    assert!(
        listed.contains("NAME") && listed.contains("db") && listed.contains("Not running"),
        "{listed}"
    );
    assert!(stdout(&run_cli(dir, &["version"])).starts_with("hcm "));

    let _service = Service::start(dir, &[]);
    eventually("hcm connected", Some(dir), || relay.listeners("db") == 1).await;
    eventually("status Connected", Some(dir), || {
        status(dir, "db").is_some_and(|s| s.state == State::Connected)
    })
    .await;
    let data: Vec<u8> = (0..1024 * 1024u32).map(|i| (i % 253) as u8).collect();
    assert!(
        relay.echo("db", &data).await.unwrap() == data,
        "1 MiB echoed through relay and hcm"
    );

    eventually("tunnel counted", Some(dir), || {
        status(dir, "db").is_some_and(|s| {
            s.tunnels_total == 1 && s.tunnels_active == 0 && s.relay_listener_count == Some(1)
        })
    })
    .await;
    let s = status(dir, "db").unwrap();
    assert_eq!(
        (s.bytes_to_endpoint, s.bytes_from_endpoint),
        (data.len() as u64, data.len() as u64)
    );
    assert_eq!(
        (s.endpoint_reachable, s.endpoint.as_deref()),
        (Some(true), Some(echo.to_string().as_str()))
    );
    let listed = stdout(&run_cli(dir, &["list", "--json"]));
    let rows: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(
        (
            rows[0]["status"].as_str(),
            rows[0]["channelsOpen"].as_u64(),
            rows[0]["relayListenerCount"].as_u64()
        ),
        (Some("Connected"), Some(1), Some(1))
    );
    let shown = stdout(&run_cli(dir, &["show", "db"]));
    assert!(
        shown.contains("Service Bus endpoint")
            && shown.contains("defaultListener")
            && !shown.contains("SharedAccessKey="),
        "{shown}"
    );
    let log = std::fs::read_to_string(dir.join("hcm.log")).unwrap();
    assert!(
        log.contains("tunnel") && log.contains("to_endpoint=1048576"),
        "one log line per tunnel"
    );
    let key = relay
        .listen_string("db")
        .split("SharedAccessKey=")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    assert!(!log.contains(&key), "keys never logged");

    let out = run_cli(dir, &["remove", "db"]);
    assert!(out.status.success() && stdout(&out).contains("Removed localhost/db"));
    eventually("listener gone after remove", Some(dir), || {
        relay.listeners("db") == 0
    })
    .await;
    assert!(!run_cli(dir, &["show", "db"]).status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_and_remove_while_running_leave_other_tunnels_alone() {
    let (relay, _rd) = relay_with(RelayOptions::default()).await;
    let echo = servers::echo_server().await;
    relay.hybrid_connection("a", echo);
    relay.hybrid_connection("b", echo);
    let home = tempfile::tempdir().unwrap();
    let dir = home.path();
    assert!(add(dir, &relay, "a", &[]).status.success());
    let _service = Service::start(dir, &[]);
    eventually("a connected", Some(dir), || relay.listeners("a") == 1).await;

    // A long-lived tunnel on 'a'.
    let (ws_r, mut ws_w) = relay.sender("a").await.unwrap();
    ws_w.send(OpCode::Binary, b"first").await.unwrap();

    assert!(
        add(dir, &relay, "b", &["--listeners", "2"])
            .status
            .success()
    );
    eventually("b connected with 2 listeners", Some(dir), || {
        relay.listeners("b") == 2
    })
    .await;
    assert_eq!(relay.echo("b", b"via b").await.unwrap(), b"via b");
    assert!(run_cli(dir, &["remove", "b"]).status.success());
    eventually("b gone", Some(dir), || relay.listeners("b") == 0).await;
    assert_eq!(relay.listeners("a"), 1);

    // The tunnel on 'a' still works.
    ws_w.send(OpCode::Binary, b" second").await.unwrap();
    ws_w.close(&CloseFrame::new(1000, "")).await.unwrap();
    let got = read_until_close(ws_r).await;
    assert_eq!(got, b"first second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_a_relay_restart() {
    let relay_dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let relay = TestRelay::start(relay_dir.path(), listener, RelayOptions::default()).await;
    let echo = servers::echo_server().await;
    relay.hybrid_connection("db", echo);
    let home = tempfile::tempdir().unwrap();
    let dir = home.path();
    assert!(add(dir, &relay, "db", &[]).status.success());
    let _service = Service::start(dir, &[]);
    eventually("connected", Some(dir), || relay.listeners("db") == 1).await;
    relay.stop().await;
    eventually("status Disconnected", Some(dir), || {
        StatusFile::read_live(dir)
            .and_then(|s| s.connections.get("localhost/db").cloned())
            .is_some_and(|s| s.channels_open == 0)
    })
    .await;

    let relay = TestRelay::start(
        relay_dir.path(),
        TcpListener::bind(addr).await.unwrap(),
        RelayOptions::default(),
    )
    .await;
    eventually("reconnected", Some(dir), || relay.listeners("db") == 1).await;
    assert_eq!(
        relay.echo("db", b"after restart").await.unwrap(),
        b"after restart"
    );
    eventually("status shows the reconnection", Some(dir), || {
        status(dir, "db").is_some_and(|s| s.connects >= 2 && s.state == State::Connected)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hcms_share_the_load_and_one_can_die() {
    let (relay, _rd) = relay_with(RelayOptions::default()).await;
    let echo = servers::echo_server().await;
    relay.hybrid_connection("db", echo);
    let (h1, h2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    assert!(add(h1.path(), &relay, "db", &[]).status.success());
    assert!(add(h2.path(), &relay, "db", &[]).status.success());
    let mut s1 = Service::start(h1.path(), &[]);
    let _s2 = Service::start(h2.path(), &[]);
    eventually("both connected", Some(h1.path()), || {
        relay.listeners("db") == 2
    })
    .await;
    for i in 0..30 {
        let msg = format!("tunnel {i}");
        assert_eq!(
            relay.echo("db", msg.as_bytes()).await.unwrap(),
            msg.as_bytes()
        );
    }
    let served = |d: &Path| {
        StatusFile::read_live(d)
            .and_then(|s| s.connections.get("localhost/db").map(|c| c.tunnels_total))
            .unwrap_or(0)
    };
    eventually("counts written", None, || {
        served(h1.path()) + served(h2.path()) == 30
    })
    .await;
    assert!(
        served(h1.path()) > 0 && served(h2.path()) > 0,
        "random choice spreads tunnels: {} / {}",
        served(h1.path()),
        served(h2.path())
    );

    s1.kill();
    eventually("relay noticed", None, || relay.listeners("db") == 1).await;
    for i in 0..30 {
        let msg = format!("after kill {i}");
        assert_eq!(
            relay.echo("db", msg.as_bytes()).await.unwrap(),
            msg.as_bytes(),
            "no failed tunnel once the relay noticed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_endpoint_is_rejected_with_a_reason() {
    let (relay, _rd) = relay_with(RelayOptions::default()).await;
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    relay.hybrid_connection("db", closed);
    let home = tempfile::tempdir().unwrap();
    let dir = home.path();
    assert!(add(dir, &relay, "db", &[]).status.success());
    let _service = Service::start(dir, &[]);
    eventually("connected", Some(dir), || relay.listeners("db") == 1).await;
    let err = relay.connect("db").await.unwrap_err();
    assert!(err.is_rejected() && err.status() == Some(502), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("Endpoint {closed} is unreachable")),
        "{err}"
    );
    eventually("status shows the endpoint down", Some(dir), || {
        status(dir, "db").is_some_and(|s| {
            s.endpoint_reachable == Some(false)
                && s.state == State::Connected
                && s.tunnels_failed == 1
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_hybrid_connection_stops_retrying_and_exits_on_failure() {
    let (relay, _rd, home) = relay_with_db(RelayOptions::default()).await;
    let dir = home.path();
    let mut service = Service::start(dir, &["--exit-on-failure"]);
    eventually("connected", Some(dir), || relay.listeners("db") == 1).await;
    relay
        .relay
        .delete_hybrid_connection("default", "db")
        .unwrap();
    let status = tokio::task::spawn_blocking(move || {
        let s = service.wait().unwrap();
        std::mem::forget(service);
        s
    })
    .await
    .unwrap();
    assert!(!status.success(), "--exit-on-failure exits non-zero");
    let log = std::fs::read_to_string(dir.join("hcm.log")).unwrap();
    assert!(log.contains("Endpoint does not exist"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_key_is_reported_not_retried() {
    let (relay, _rd) = relay_with(RelayOptions::default()).await;
    let echo = servers::echo_server().await;
    relay.hybrid_connection("db", echo);
    let home = tempfile::tempdir().unwrap();
    let dir = home.path();
    let bad = relay
        .listen_string("db")
        .replace("SharedAccessKey=", "SharedAccessKey=x");
    let ca = relay.ca_file();
    let out = run_cli(dir, &["add", &bad, "--ca-file", ca.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        run_cli(
            dir,
            &[
                "add",
                &bad,
                "--ca-file",
                ca.to_str().unwrap(),
                "--no-verify"
            ]
        )
        .status
        .success()
    );
    let mut service = Service::start(dir, &[]);
    eventually("status Unauthorized", Some(dir), || {
        status(dir, "db").is_some_and(|s| s.state == State::Unauthorized)
    })
    .await;
    let shown = stdout(&run_cli(dir, &["show", "db"]));
    assert!(
        shown.contains("Unauthorized") && shown.contains("InvalidSignature"),
        "{shown}"
    );
    assert!(service.terminate().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_live_tunnels_finish() {
    let (relay, _rd, home) = relay_with_db(RelayOptions::default()).await;
    let dir = home.path();
    let mut service = Service::start(dir, &["--grace", "10"]);
    eventually("connected", Some(dir), || relay.listeners("db") == 1).await;
    let (ws_r, mut ws_w) = relay.sender("db").await.unwrap();
    ws_w.send(OpCode::Binary, b"before").await.unwrap();
    service.signal(procs::Signal::TERM).unwrap();
    eventually("listener closed", Some(dir), || relay.listeners("db") == 0).await;
    // The live tunnel still carries data, then ends cleanly and the process exits 0.
    ws_w.send(OpCode::Binary, b" after").await.unwrap();
    ws_w.close(&CloseFrame::new(1000, "")).await.unwrap();
    let got = read_until_close(ws_r).await;
    assert_eq!(got, b"before after");
    let exit = tokio::task::spawn_blocking(move || service.wait().unwrap())
        .await
        .unwrap();
    assert!(exit.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_malformed_metadata_is_named() {
    let (relay, _rd) = relay_with(RelayOptions::default()).await;
    relay
        .relay
        .put_hybrid_connection("default", "bare", true, None)
        .unwrap();
    relay
        .relay
        .put_hybrid_connection(
            "default",
            "odd",
            true,
            Some(r#"[{"key":"endpoint","value":"db.internal"}]"#.into()),
        )
        .unwrap();
    let home = tempfile::tempdir().unwrap();
    let dir = home.path();
    let out = add(dir, &relay, "bare", &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("'bare' has no userMetadata")
            && err.contains("--endpoint"),
        "{err}"
    );
    let out = add(dir, &relay, "odd", &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("'odd'")
            && err.contains("'db.internal' is not host:port"),
        "{err}"
    );
    // With --endpoint the metadata is not needed.
    let echo = servers::echo_server().await;
    let endpoint = echo.to_string();
    assert!(
        add(dir, &relay, "bare", &["--endpoint", &endpoint])
            .status
            .success()
    );
    let _service = Service::start(dir, &[]);
    eventually("connected", Some(dir), || relay.listeners("bare") == 1).await;
    assert_eq!(relay.echo("bare", b"override").await.unwrap(), b"override");
    eventually("override reported", Some(dir), || {
        status(dir, "bare").is_some_and(|s| s.endpoint_source.as_deref() == Some("override"))
    })
    .await;
}

impl TestRelay {
    /// A control channel on `hc` held by the test (it counts against the namespace quota).
    async fn occupy(&self, hc: &str) -> hc_client::listener::ControlChannel {
        let tls = hc_client::tls::client_config(Some(&self.ca_file())).unwrap();
        let endpoint =
            RelayEndpoint::from_endpoint(&format!("sb://{}/", self.authority()), tls).unwrap();
        let cs = self
            .relay
            .connection_string("default", Some(hc), "defaultListener", &self.authority())
            .unwrap();
        let config = hc_client::listener::ListenerConfig {
            endpoint,
            path: hc.into(),
            tokens: TokenProvider::from_connection_string(&cs, Duration::from_secs(600)),
            tracking_id: "occupier".into(),
        };
        hc_client::listener::ControlChannel::open(&config)
            .await
            .unwrap()
    }
}

/// A 403 QuotaExceeded is transient: the HCM reports it, keeps retrying, and connects once
/// there is room (it used to give up for good as Unauthorized).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_exceeded_is_retried_not_fatal() {
    let options = RelayOptions {
        max_connections_per_namespace: 2,
        ..Default::default()
    };
    let (relay, _rd, home) = relay_with_db(options).await;
    let dir = home.path();
    let occupier = (relay.occupy("db").await, relay.occupy("db").await);
    let _service = Service::start(dir, &[]);
    let listed_status = || {
        let rows: serde_json::Value =
            serde_json::from_str(&stdout(&run_cli(dir, &["list", "--json"]))).unwrap_or_default();
        rows[0]["status"].as_str().unwrap_or_default().to_owned()
    };
    eventually("status QuotaExceeded", Some(dir), || {
        listed_status() == "QuotaExceeded"
    })
    .await;
    let s = status(dir, "db").unwrap();
    assert!(
        s.last_error
            .as_deref()
            .is_some_and(|e| e.contains("QuotaExceeded")),
        "{s:?}"
    );
    let listed = stdout(&run_cli(dir, &["list"]));
    assert!(
        listed.contains("QuotaExceeded")
            && listed.contains("0/1")
            && listed.contains("last error: "),
        "{listed}"
    );
    drop(occupier);
    eventually("connected once there is room", Some(dir), || {
        listed_status() == "Connected" && relay.relay.connection_count("default") == 1
    })
    .await;
    assert_eq!(
        relay.echo("db", b"room at last").await.unwrap(),
        b"room at last"
    );
}

/// With several channels, one refused for quota while the others run is retried and shows
/// in `hcm list`, and it opens once there is room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_channel_is_watched_and_retried() {
    let options = RelayOptions {
        max_connections_per_namespace: 3,
        ..Default::default()
    };
    let (relay, _rd) = relay_with(options).await;
    let echo = servers::echo_server().await;
    relay.hybrid_connection("db", echo);
    let home = tempfile::tempdir().unwrap();
    let dir = home.path();
    assert!(
        add(dir, &relay, "db", &["--listeners", "3"])
            .status
            .success()
    );
    let occupier = relay.occupy("db").await;
    let _service = Service::start(dir, &[]);
    eventually("two channels open", Some(dir), || {
        relay.listeners("db") == 3
    })
    .await;
    eventually("the refusal reported", Some(dir), || {
        status(dir, "db").is_some_and(|s| {
            s.channels_open == 2
                && s.last_error
                    .as_deref()
                    .is_some_and(|e| e.contains("QuotaExceeded"))
        })
    })
    .await;
    let listed = stdout(&run_cli(dir, &["list"]));
    assert!(
        listed.contains("2/3")
            && listed.contains("last error: ")
            && listed.contains("QuotaExceeded"),
        "{listed}"
    );
    drop(occupier);
    eventually("the third channel opens", Some(dir), || {
        status(dir, "db").is_some_and(|s| s.channels_open == 3)
    })
    .await;
}

/// `--max-tunnels` caps concurrent tunnels; the next sender gets 503 with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_tunnels_are_capped() {
    let (relay, _rd, home) = relay_with_db(RelayOptions::default()).await;
    let dir = home.path();
    let _service = Service::start(dir, &["--max-tunnels", "2"]);
    eventually("connected", Some(dir), || relay.listeners("db") == 1).await;
    let (first_r, mut first_w) = relay.sender("db").await.unwrap();
    let _second = relay.connect("db").await.unwrap();
    let err = relay.connect("db").await.unwrap_err();
    assert!(
        err.status() == Some(503) && err.to_string().contains("limit of 2 concurrent tunnels"),
        "{err}"
    );
    first_w.close(&CloseFrame::new(1000, "")).await.unwrap();
    let _ = read_until_close(first_r).await;
    eventually("a slot is free again", Some(dir), || {
        status(dir, "db").is_some_and(|s| s.tunnels_active == 1)
    })
    .await;
    assert_eq!(relay.echo("db", b"third").await.unwrap(), b"third");
}

/// Durations that would make a hot loop or overflow are refused, naming the flag.
#[test]
fn run_flags_are_validated() {
    let home = tempfile::tempdir().unwrap();
    for (args, flag) in [
        (vec!["--min-backoff", "0"], "--min-backoff"),
        (vec!["--max-backoff", "0"], "--max-backoff"),
        (vec!["--keepalive", "inf"], "--keepalive"),
        (vec!["--grace=-1"], "--grace"),
        (vec!["--token-ttl", "18446744073709551615"], "--token-ttl"),
        (vec!["--endpoint-timeout", "NaN"], "--endpoint-timeout"),
        (vec!["--max-tunnels", "0"], "--max-tunnels"),
        (
            vec!["--min-backoff", "5", "--max-backoff", "1"],
            "--max-backoff",
        ),
    ] {
        // A flag that is wrongly accepted makes `run` serve forever: give it 10 s.
        let mut child = hcm(home.path())
            .arg("run")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let started = std::time::Instant::now();
        while child.try_wait().unwrap().is_none() {
            if started.elapsed() > Duration::from_secs(10) {
                child.kill().unwrap();
                panic!("{args:?} was accepted: `hcm run` kept running");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(flag),
            "{args:?}: {err}"
        );
    }
}
