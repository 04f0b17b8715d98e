//! Conformance with Microsoft's official Node client `hyco-ws` (npm, PEERS.md §6, §11): its
//! listener and sender through our relay, its sender through our relay and our HCM to a TCP
//! server, our sender library to its listener, and its view of our error statuses. Ignored by
//! default (they need node and npm); `cargo test --workspace -- --include-ignored` runs them
//! and then fails, never skips, when Node or the package is missing (.ci/run installs them).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use serde_json::Value;

use hc_emulator::chain::Chain;
use hc_emulator::servers;
use hc_protocol::{ConnectionString, Credential};
use integration_tests::TestRelay;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A hyco-ws peer.
struct Peer;

impl Peer {
    fn start(
        mode: &str,
        url: &str,
        ca: &std::path::Path,
        key: (&str, &str),
        env: &[(&str, &str)],
    ) -> integration_tests::node::Peer {
        integration_tests::node::Peer::start("node", &[mode, url], ca, key, env)
    }
}

/// Name and key of a rule, from the relay's model.
fn key(relay: &TestRelay, hc: &str, rule: &str) -> (String, String) {
    (
        rule.to_owned(),
        relay.key("default", Some(hc), rule).expose().to_owned(),
    )
}

fn ca_file(relay: &TestRelay, dir: &tempfile::TempDir) -> PathBuf {
    let path = dir.path().join("ca.pem");
    std::fs::write(&path, relay.emulator.ca_pem.as_ref().unwrap()).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs node and npm (Microsoft's hyco-ws); --include-ignored runs it"]
async fn hyco_ws_listener_and_sender_through_our_relay() {
    let relay = TestRelay::default_tls().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = ca_file(&relay, &dir);
    let (ln, lk) = key(&relay, "sample", "defaultListener");
    let (sn, sk) = key(&relay, "sample", "defaultSender");
    let mut listener = Peer::start(
        "listen-echo",
        &relay.url("localhost", "/$hc/sample?sb-hc-action=listen"),
        &ca,
        (&ln, &lk),
        &[],
    );
    listener.until("listening").await;
    for mode in ["send", "send-query"] {
        let mut sender = Peer::start(
            mode,
            &relay.url("localhost", "/$hc/sample?sb-hc-action=connect"),
            &ca,
            (&sn, &sk),
            &[],
        );
        let events = sender.until("close").await;
        let echoes: Vec<&Value> = events.iter().filter(|e| e["event"] == "echo").collect();
        assert_eq!(echoes.len(), 3, "{mode}: {events:?}");
        assert!(echoes.iter().all(|e| e["ok"] == true), "{mode}: {events:?}");
        assert_eq!(echoes[2]["length"], 16 * 1024 * 1024);
        let close = events.last().unwrap();
        assert_eq!(
            (close["code"].as_u64(), close["reason"].as_str()),
            (Some(4000), Some("bye")),
            "{mode}: the sender's close comes back"
        );
        let seen = listener.until("close").await;
        let messages: Vec<&Value> = seen.iter().filter(|e| e["event"] == "message").collect();
        assert_eq!(
            messages
                .iter()
                .map(|m| m["binary"].as_bool().unwrap())
                .collect::<Vec<_>>(),
            [false, true, true],
            "{mode}: text stays text"
        );
        let close = seen.last().unwrap();
        assert_eq!(
            (close["code"].as_u64(), close["reason"].as_str()),
            (Some(4000), Some("bye")),
            "{mode}: the listener sees the sender's code"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs node and npm (Microsoft's hyco-ws); --include-ignored runs it"]
async fn hyco_ws_sender_through_our_hcm_to_a_tcp_server() {
    let echo = servers::echo_server().await;
    let c = Chain::start(&echo.to_string()).await.unwrap();
    let cs = ConnectionString::parse(&c.send_cs).unwrap();
    let Some(Credential::Key { name, key }) = &cs.credential else {
        panic!()
    };
    let url = format!(
        "wss://localhost:{}/$hc/{}?sb-hc-action=connect",
        c.relay_port,
        hc_emulator::chain::HC
    );
    let payload = "through hyco-ws, our relay and our hcm";
    let mut sender = Peer::start(
        "send-bytes",
        &url,
        &c.ca,
        (name, key.expose()),
        &[("HC_PAYLOAD", payload)],
    );
    let events = sender.until("close").await;
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "reply" && e["text"] == payload),
        "{events:?}\n{}",
        c.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs node and npm (Microsoft's hyco-ws); --include-ignored runs it"]
async fn our_sender_library_to_a_hyco_ws_listener() {
    let relay = TestRelay::default_tls().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = ca_file(&relay, &dir);
    let (ln, lk) = key(&relay, "sample", "defaultListener");
    let mut listener = Peer::start(
        "listen-echo",
        &relay.url("localhost", "/$hc/sample?sb-hc-action=listen"),
        &ca,
        (&ln, &lk),
        &[],
    );
    listener.until("listening").await;
    let send = relay
        .emulator
        .relay
        .connection_string(
            "default",
            Some("sample"),
            "defaultSender",
            &relay.emulator.authority(),
        )
        .unwrap()
        .expose();
    let tls = hc_client::tls::client_config(Some(&ca)).unwrap();
    let hc = app_side_shim::HybridConnection::from_connection_string(&send, tls).unwrap();
    let mut stream = hc.connect().await.unwrap();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
    stream.write_all(&data).await.unwrap();
    let mut back = vec![0u8; data.len()];
    stream.read_exact(&mut back).await.unwrap();
    assert!(
        back == data,
        "the hyco-ws listener echoed every byte in order"
    );
    stream.shutdown().await.unwrap();
    let seen = listener.until("close").await;
    assert_eq!(seen.last().unwrap()["code"], 1000, "{seen:?}");
    let total: u64 = seen
        .iter()
        .filter(|e| e["event"] == "message")
        .map(|e| e["length"].as_u64().unwrap())
        .sum();
    assert_eq!(total, data.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs node and npm (Microsoft's hyco-ws); --include-ignored runs it"]
async fn the_official_client_sees_the_documented_statuses() {
    let relay = TestRelay::default_tls().await;
    relay
        .emulator
        .relay
        .put_hybrid_connection("default", "other", true, None)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = ca_file(&relay, &dir);
    let listen_url = relay.url("localhost", "/$hc/sample?sb-hc-action=listen");
    let connect_url = relay.url("localhost", "/$hc/sample?sb-hc-action=connect");
    let (sn, sk) = key(&relay, "sample", "defaultSender");
    let (ln, lk) = key(&relay, "sample", "defaultListener");
    let (on, ok) = key(&relay, "other", "defaultListener");
    struct Case<'a>(
        &'a str,
        &'a str,
        (&'a str, &'a str),
        &'a [(&'a str, &'a str)],
        u64,
        &'a str,
    );
    let cases = [
        Case(
            "wrong key",
            &connect_url,
            (&sn, "bm90IHRoZSBrZXk="),
            &[],
            401,
            "InvalidSignature:",
        ),
        Case(
            "expired token",
            &connect_url,
            (&sn, &sk),
            &[("HC_TOKEN_SECONDS", "-3600")],
            401,
            "ExpiredToken:",
        ),
        Case(
            "Send-only rule used to listen",
            &listen_url,
            (&sn, &sk),
            &[],
            403,
            "Unauthorized access. 'Listen' claim(s) are required",
        ),
        Case(
            "other hybrid connection's rule",
            &listen_url,
            (&on, &ok),
            &[],
            401,
            "InvalidSignature:",
        ),
        Case(
            "no listener",
            &connect_url,
            (&sn, &sk),
            &[],
            404,
            "There are no listeners connected for the endpoint.",
        ),
        Case("valid listen token", &listen_url, (&ln, &lk), &[], 101, ""),
    ];
    for Case(what, url, key, env, status, reason) in cases {
        let mut peer = Peer::start("status", url, &ca, key, env);
        let e = peer.until("status").await;
        let e = e.last().unwrap();
        assert_eq!(e["status"].as_u64(), Some(status), "{what}: {e}");
        assert!(
            e["reason"].as_str().unwrap_or_default().starts_with(reason),
            "{what}: {e}"
        );
    }
}

/// Open descriptors of this process (the in-process relay's sockets are among them).
fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs node and npm (Microsoft's hyco-ws); --include-ignored runs it"]
async fn a_reconnect_storm_from_a_bad_key_leaves_the_relay_healthy() {
    let relay = TestRelay::default_tls().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = ca_file(&relay, &dir);
    let baseline = fd_count();
    // hyco-ws reconnects at once after every refusal: about a thousand attempts a second.
    let mut storm = Peer::start(
        "listen-echo",
        &relay.url("localhost", "/$hc/sample?sb-hc-action=listen"),
        &ca,
        ("defaultListener", "d3JvbmcgbGlzdGVuIGtleQ=="),
        &[],
    );
    let until = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
    let mut refused = 0;
    while let Ok(event) = tokio::time::timeout_at(until, storm.next()).await {
        refused += usize::from(event["event"] == "error");
    }
    drop(storm);
    eprintln!("{refused} refused listen attempts in 2 s");
    assert!(refused > 100, "the storm happened: {refused} attempts");
    // Still serving: a good listener and sender work.
    let (ln, lk) = key(&relay, "sample", "defaultListener");
    let (sn, sk) = key(&relay, "sample", "defaultSender");
    let mut listener = Peer::start(
        "listen-echo",
        &relay.url("localhost", "/$hc/sample?sb-hc-action=listen"),
        &ca,
        (&ln, &lk),
        &[],
    );
    listener.until("listening").await;
    let mut sender = Peer::start(
        "send",
        &relay.url("localhost", "/$hc/sample?sb-hc-action=connect"),
        &ca,
        (&sn, &sk),
        &[],
    );
    let events = sender.until("close").await;
    assert_eq!(
        events
            .iter()
            .filter(|e| e["event"] == "echo" && e["ok"] == true)
            .count(),
        3,
        "{events:?}"
    );
    drop((listener, sender));
    // Nothing leaked: descriptors go back to where they were.
    for _ in 0..500 {
        if fd_count() <= baseline + 2 && relay.emulator.relay.connection_count("default") == 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!(
        "descriptors {baseline} -> {}, connections {}",
        fd_count(),
        relay.emulator.relay.connection_count("default")
    );
}
