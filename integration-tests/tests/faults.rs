//! Issue 15: fault injection. Each fault is met by the whole chain as a user runs it (the
//! `relay-server`, `hcm` and `app-side-shim` binaries, a TCP server as endpoint), added through
//! the REST API or the `relay-server fault` CLI, and each test checks what the HCM, the shim
//! or a sender did about it, and that clearing it restores service. The API's checks, the
//! Rust API and the config file are tested on an in-process relay.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use hc_client::relay::RelayEndpoint;
use hc_client::token::TokenProvider;
use hc_emulator::chain::{Chain, ChainBuilder, HC};
use hc_emulator::procs::{self, http_request};
use hc_emulator::servers;
use hc_protocol::ConnectionString;
use integration_tests::metric;
use relay_server::{ConfigFile, FaultKind, FaultSpec, RelayOptions};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Waits for `what` (checked every 20 ms, 30 s at most).
async fn eventually(c: &Chain, what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..1500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for: {what}\n{}", c.logs());
}

fn ca(c: &Chain) -> Option<&Path> {
    (!c.plain).then_some(c.ca.as_path())
}

/// `POST /$faults` on the chain's relay; the fault as the relay answered.
fn add(c: &Chain, spec: Value) -> Value {
    let (status, body) = http_request(
        c.relay_addr,
        "POST",
        "/$faults",
        Some(&spec.to_string()),
        ca(c),
    )
    .unwrap();
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status, 201, "{spec} -> {answer}");
    answer
}

/// `GET /$faults/{id}`.
fn get(c: &Chain, id: &str) -> Value {
    let (status, body) =
        http_request(c.relay_addr, "GET", &format!("/$faults/{id}"), None, ca(c)).unwrap();
    assert_eq!(status, 200);
    serde_json::from_slice(&body).unwrap()
}

/// `DELETE /$faults`.
fn clear(c: &Chain) {
    let (status, _) = http_request(c.relay_addr, "DELETE", "/$faults", None, ca(c)).unwrap();
    assert_eq!(status, 200);
}

/// `relay-server fault --data-dir {the chain's relay} ARGS…`.
fn cli(c: &Chain, args: &[&str]) -> std::process::Output {
    Command::new(procs::binary("relay-server").unwrap())
        .arg("fault")
        .arg("--data-dir")
        .arg(c.relay_data_dir())
        .args(args)
        .output()
        .unwrap()
}

fn stdout(o: &std::process::Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn relay_metric(c: &Chain, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric(&c.metrics("relay").unwrap(), name, labels)
}

/// The HCM's status file (written a moment after it starts and on changes).
fn hcm(c: &Chain) -> hcm::status::HcStatus {
    for _ in 0..250 {
        if let Some(s) = c.hcm_status() {
            return s;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("no hcm status\n{}", c.logs())
}

/// Writes `data` through the shim, half-closes, reads everything back.
async fn echo(c: &Chain, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(c.forward).await?;
    let (mut r, mut w) = s.split();
    let mut got = Vec::new();
    let (sent, read) = tokio::join!(
        async {
            w.write_all(data).await?;
            w.shutdown().await
        },
        tokio::time::timeout(Duration::from_secs(30), r.read_to_end(&mut got))
    );
    sent?;
    read.map_err(|_| std::io::Error::other("echo timed out"))??;
    Ok(got)
}

/// A sender on the chain's hybrid connection, with our sender library.
async fn sender(c: &Chain) -> Result<hc_client::handshake::WsStream, hc_client::Error> {
    let tls = hc_client::tls::client_config(Some(&c.ca)).unwrap();
    app_side_shim::HybridConnection::from_connection_string(&c.send_cs, tls)
        .unwrap()
        .connect_ws()
        .await
}

/// A sender's connect that must fail; its error.
async fn refused(c: &Chain, why: &str) -> hc_client::Error {
    match sender(c).await {
        Ok(_) => panic!("the connect succeeded, but {why}"),
        Err(e) => e,
    }
}

/// The relay's listeners on the chain's hybrid connection, from `/metrics`.
fn relay_listeners(c: &Chain) -> f64 {
    relay_metric(c, "relay_listeners", &[("hybrid_connection", HC)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_listeners_make_the_hcm_reconnect() {
    let echo_addr = servers::echo_server().await;
    let c = Chain::start(&echo_addr.to_string()).await.unwrap();
    let before = hcm(&c);

    // With a close code, through the CLI: the HCM's channel is closed and it reconnects.
    let out = stdout(&cli(&c, &["add", "drop-listeners", "--close-code", "1011"]));
    assert!(
        out.contains("dropListeners") && out.contains("applied 1"),
        "{out}"
    );
    eventually(&c, "the HCM lost its channel and reconnected", || {
        let s = hcm(&c);
        s.channel_losses > before.channel_losses
            && s.connects > before.connects
            && s.channels_open == 1
    })
    .await;
    c.wait_hcm_connected().unwrap();
    assert_eq!(echo(&c, b"after 1011").await.unwrap(), b"after 1011");

    // Without a close code: TCP is dropped without a Close; the HCM notices and reconnects.
    let mid = hcm(&c);
    let f = add(&c, json!({"kind": "dropListeners", "hybridConnection": HC}));
    assert_eq!(
        (f["applied"].as_u64(), f["ended"].as_str()),
        (Some(1), Some("acted"))
    );
    eventually(&c, "reconnected after a TCP drop", || {
        let s = hcm(&c);
        s.channel_losses > mid.channel_losses && s.connects > mid.connects && s.channels_open == 1
    })
    .await;

    // Lasting for 3 drops: the live channel and the next two that join are dropped, then the
    // fault ends and the HCM stays connected.
    let mid = hcm(&c);
    let f = add(
        &c,
        json!({"kind": "dropListeners", "closeCode": 1001, "count": 3}),
    );
    let id = f["id"].as_str().unwrap().to_owned();
    eventually(&c, "three drops, then the fault ends", || {
        get(&c, &id)["ended"] == "count"
    })
    .await;
    assert_eq!(get(&c, &id)["applied"], 3);
    eventually(&c, "the HCM reconnected after the third drop", || {
        let s = hcm(&c);
        s.connects >= mid.connects + 3 && s.channels_open == 1
    })
    .await;
    c.wait_hcm_connected().unwrap();
    assert_eq!(echo(&c, b"still here").await.unwrap(), b"still here");
    assert_eq!(
        relay_metric(
            &c,
            "relay_fault_applications_total",
            &[("kind", "dropListeners"), ("hybrid_connection", HC)]
        ),
        5.0
    );
    assert_eq!(
        relay_metric(&c, "relay_faults_active", &[("kind", "dropListeners")]),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connects_reach_senders_with_the_chosen_status() {
    let echo_addr = servers::echo_server().await;
    let c = Chain::start(&echo_addr.to_string()).await.unwrap();

    // Two 503s, then service again.
    let f = add(
        &c,
        json!({"kind": "refuseConnects", "status": 503, "count": 2}),
    );
    for _ in 0..2 {
        let e = refused(&c, "refused").await;
        assert_eq!(e.status(), Some(503), "{e}");
        assert!(e.to_string().contains("ServerBusy"), "{e}");
    }
    assert!(sender(&c).await.is_ok());
    assert_eq!(get(&c, f["id"].as_str().unwrap())["ended"], "count");

    // Every second connect gets the chosen 403 QuotaExceeded and reason, through the shim too:
    // the app's connection is closed without a byte.
    add(
        &c,
        json!({"kind": "refuseConnects", "status": 403, "reason": "QuotaExceeded: injected", "everyNth": 2}),
    );
    assert!(sender(&c).await.is_ok());
    let e = refused(&c, "every 2nd refused").await;
    assert_eq!(e.status(), Some(403));
    assert!(
        e.is_quota_exceeded() && e.to_string().contains("QuotaExceeded: injected"),
        "{e}"
    );
    assert_eq!(echo(&c, b"third").await.unwrap(), b"third");
    let refused = echo(&c, b"fourth").await;
    assert!(
        refused.as_ref().map_or(true, Vec::is_empty),
        "the shim closes the app's connection: {refused:?}"
    );
    let shim = c.metrics("shim").unwrap();
    assert_eq!(
        metric(
            &shim,
            "shim_tunnels_total",
            &[("outcome", "connect_failed")]
        ),
        1.0
    );
    clear(&c);
    for i in 0..4u8 {
        assert_eq!(echo(&c, &[i; 10]).await.unwrap(), [i; 10]);
    }
    assert_eq!(
        relay_metric(
            &c,
            "relay_tunnels_total",
            &[("outcome", "fault"), ("status", "403")]
        ),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_listens_are_retried_with_backoff() {
    let echo_addr = servers::echo_server().await;
    let c = Chain::start(&echo_addr.to_string()).await.unwrap();
    let before = hcm(&c);
    let f = add(
        &c,
        json!({"kind": "refuseListens", "status": 503, "count": 3, "hybridConnection": HC}),
    );
    add(&c, json!({"kind": "dropListeners"}));
    let id = f["id"].as_str().unwrap().to_owned();
    eventually(&c, "three refused listens", || {
        get(&c, &id)["ended"] == "count"
    })
    .await;
    eventually(&c, "connected again", || hcm(&c).channels_open == 1).await;
    let s = hcm(&c);
    assert!(s.connect_failures >= before.connect_failures + 3, "{s:?}");
    assert_eq!(s.state, hcm::status::State::Connected, "503 is not fatal");
    assert_eq!(echo(&c, b"back").await.unwrap(), b"back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_tokens_close_with_1008_after_the_grace_and_renewals_are_refused() {
    let echo_addr = servers::echo_server().await;
    // A 1 s grace; the HCM renews every 2.4 s (80% of 3 s tokens).
    let c = ChainBuilder::new(echo_addr.to_string())
        .relay_args(["--token-grace", "1"])
        .hcm_args(["--token-ttl", "3"])
        .start()
        .await
        .unwrap();
    // Renewals work before the fault.
    eventually(&c, "a renewal", || hcm(&c).token_renewals >= 1).await;
    let before = hcm(&c);
    let f = add(&c, json!({"kind": "expireTokens", "durationSeconds": 600}));
    assert_eq!(f["applied"], 1, "the live listener's token expired: {f}");
    let id = f["id"].as_str().unwrap().to_owned();
    // The channel closes (1008 after the grace, or at the refused renewal); the HCM
    // reconnects with a fresh token, which is accepted, and its next renewal is refused.
    eventually(&c, "two channels lost to the fault", || {
        hcm(&c).channel_losses >= before.channel_losses + 2
    })
    .await;
    assert!(get(&c, &id)["applied"].as_u64().unwrap() >= 2);
    let log = c.relay.log_text();
    assert!(log.contains("closed by relay: 1008 ExpiredToken"), "{log}");
    // Cleared: renewals are accepted again and the channel stays.
    clear(&c);
    let cleared = hcm(&c);
    eventually(&c, "two renewals after the fault", || {
        let s = hcm(&c);
        s.token_renewals >= cleared.token_renewals + 2 && s.channels_open == 1
    })
    .await;
    let after = hcm(&c);
    assert!(
        after.channel_losses <= cleared.channel_losses + 1,
        "at most the channel that was being closed when the fault was cleared: {after:?}"
    );
    assert_eq!(echo(&c, b"renewed").await.unwrap(), b"renewed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_control_channel_times_senders_out_until_cleared() {
    let echo_addr = servers::echo_server().await;
    let c = ChainBuilder::new(echo_addr.to_string())
        .relay_args(["--rendezvous-timeout", "1"])
        .hcm_args(["--keepalive", "0.3"])
        .start()
        .await
        .unwrap();
    let before = hcm(&c);
    let out = stdout(&cli(&c, &["add", "stall-control", "--hc", HC]));
    assert!(out.contains("stallControl on */chain"), "{out}");
    let t0 = Instant::now();
    let e = refused(&c, "no accept while stalled").await;
    assert_eq!(e.status(), Some(504), "{e}");
    assert!(t0.elapsed() >= Duration::from_millis(950));
    // The HCM hears nothing (no Pong) and reconnects; the new channel is stalled too.
    eventually(&c, "the HCM gave up on the silent relay", || {
        hcm(&c).channel_losses > before.channel_losses
    })
    .await;
    let out = stdout(&cli(&c, &["clear"]));
    assert!(out.contains("Cleared 1"), "{out}");
    // Stale channels end once they read again; then one listener remains and serves.
    eventually(&c, "one live listener", || relay_listeners(&c) == 1.0).await;
    c.wait_hcm_connected().unwrap();
    assert_eq!(echo(&c, b"unstalled").await.unwrap(), b"unstalled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_delays_count_against_the_rendezvous_timeout() {
    let echo_addr = servers::echo_server().await;
    let c = ChainBuilder::new(echo_addr.to_string())
        .relay_args(["--rendezvous-timeout", "2"])
        .start()
        .await
        .unwrap();
    add(
        &c,
        json!({"kind": "delayAccept", "delayMs": 400, "count": 1}),
    );
    let t0 = Instant::now();
    assert_eq!(echo(&c, b"late").await.unwrap(), b"late");
    let waited = t0.elapsed();
    assert!(waited >= Duration::from_millis(400), "{waited:?}");

    add(
        &c,
        json!({"kind": "delayRendezvous", "delayMs": 3000, "count": 1}),
    );
    let t0 = Instant::now();
    let e = refused(&c, "the answer came too late").await;
    assert_eq!(e.status(), Some(504), "{e}");
    assert!(
        e.to_string()
            .contains("did not accept the connection within"),
        "{e}"
    );
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(1950) && waited < Duration::from_millis(2900),
        "{waited:?}"
    );
    let delayed = add(
        &c,
        json!({"kind": "delayAccept", "delayMs": 2500, "count": 1}),
    );
    let e = refused(&c, "accept after the timeout").await;
    assert_eq!(e.status(), Some(504), "{e}");
    assert_eq!(get(&c, delayed["id"].as_str().unwrap())["ended"], "count");
    assert_eq!(echo(&c, b"on time").await.unwrap(), b"on time");
}

/// An echo server that reports the end of each connection that carried bytes.
async fn watched_echo() -> (SocketAddr, mpsc::UnboundedReceiver<u64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut total = 0u64;
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            total += n as u64;
                            if s.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                // The HCM's reachability probes carry nothing; tunnels here always do.
                if total > 0 {
                    let _ = tx.send(total);
                }
            });
        }
    });
    (addr, rx)
}

/// The TrackingIds of the relay's live tunnels, from the status API.
fn live_tunnels(c: &Chain) -> Vec<String> {
    let (_, body) = http_request(c.relay_addr, "GET", "/$status/api", None, ca(c)).unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    v["namespaces"][0]["hybridConnections"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|hc| hc["tunnels"].as_array().cloned().unwrap_or_default())
        .map(|t| t["trackingId"].as_str().unwrap().to_owned())
        .collect()
}

/// Reads until the connection ends; `Ok(bytes)` at EOF, `Err` at a reset.
async fn read_to_end_or_reset(s: &mut TcpStream) -> Result<usize, std::io::Error> {
    let mut got = 0;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("the connection did not end")
        {
            Ok(0) => return Ok(got),
            Ok(n) => got += n,
            Err(e) => return Err(e),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_tunnels_end_both_tcp_sides() {
    let (server, mut ended) = watched_echo().await;
    let c = Chain::start(&server.to_string()).await.unwrap();

    // One tunnel, cut by its TrackingId (close mode) from the CLI.
    let mut app = TcpStream::connect(c.forward).await.unwrap();
    app.write_all(b"hello").await.unwrap();
    let mut five = [0u8; 5];
    app.read_exact(&mut five).await.unwrap();
    let ids = live_tunnels(&c);
    assert_eq!(ids.len(), 1);
    let out = stdout(&cli(&c, &["add", "cut-tunnels", "--tracking-id", &ids[0]]));
    assert!(out.contains("applied 1"), "{out}");
    let _ = read_to_end_or_reset(&mut app).await;
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(10), ended.recv())
            .await
            .unwrap(),
        Some(5),
        "the endpoint's connection ended too"
    );

    // Every live tunnel, reset mode (no Close: an abort on both sides).
    let mut apps = Vec::new();
    for _ in 0..3 {
        let mut a = TcpStream::connect(c.forward).await.unwrap();
        a.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        a.read_exact(&mut one).await.unwrap();
        apps.push(a);
    }
    let f = add(&c, json!({"kind": "cutTunnels", "mode": "reset"}));
    assert_eq!(f["applied"], 3);
    for a in &mut apps {
        let _ = read_to_end_or_reset(a).await;
    }
    for _ in 0..3 {
        tokio::time::timeout(Duration::from_secs(10), ended.recv())
            .await
            .unwrap()
            .unwrap();
    }

    // Each tunnel after 100,000 bytes (both ways): a 1 MB echo stops early, both sides end.
    add(
        &c,
        json!({"kind": "cutTunnels", "afterBytes": 100_000, "count": 1}),
    );
    let mut app = TcpStream::connect(c.forward).await.unwrap();
    let (mut r, mut w) = app.split();
    let data = vec![7u8; 1_000_000];
    let (_, got) = tokio::join!(async { w.write_all(&data).await }, async {
        let mut got = 0usize;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match tokio::time::timeout(Duration::from_secs(10), r.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return got,
                Ok(Ok(n)) => got += n,
                Err(_) => panic!("the cut tunnel did not end after {got} bytes\n{}", c.logs()),
            }
        }
    });
    assert!(got < 1_000_000, "cut before the end: {got}");
    let server_saw = tokio::time::timeout(Duration::from_secs(10), ended.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(server_saw < 1_000_000, "{server_saw}");
    // The count is used up: the next tunnel is whole.
    let data = vec![9u8; 300_000];
    assert_eq!(echo(&c, &data).await.unwrap(), data);
    assert_eq!(
        relay_metric(&c, "relay_tunnels_closed_total", &[("outcome", "aborted")]),
        5.0
    );
}

/// Median round trip of a 64-byte message through `s`.
async fn rtt(s: &mut TcpStream, n: usize) -> Duration {
    let mut times = Vec::new();
    let mut buf = [0u8; 64];
    for i in 0..n {
        let t0 = Instant::now();
        s.write_all(&[i as u8; 64]).await.unwrap();
        s.read_exact(&mut buf).await.unwrap();
        times.push(t0.elapsed());
    }
    times.sort();
    times[n / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shaped_tunnels_have_the_latency_and_rate_asked() {
    let echo_addr = servers::echo_server().await;
    let c = Chain::start(&echo_addr.to_string()).await.unwrap();
    let mut app = TcpStream::connect(c.forward).await.unwrap();
    app.set_nodelay(true).unwrap();
    let base = rtt(&mut app, 9).await;

    // 100 ms each way, added to the live tunnel: the round trip grows by 200 ms (within 10%).
    let f = add(&c, json!({"kind": "shapeTunnels", "latencyMs": 100}));
    let shaped = rtt(&mut app, 7).await;
    let added = shaped.saturating_sub(base);
    eprintln!("round trip: base {base:?}, with 100 ms each way {shaped:?}");
    assert!(
        added >= Duration::from_millis(200) && added <= Duration::from_millis(220),
        "base {base:?}, shaped {shaped:?}"
    );
    // Cleared: back to the base (the same tunnel).
    http_request(
        c.relay_addr,
        "DELETE",
        &format!("/$faults/{}", f["id"].as_str().unwrap()),
        None,
        ca(&c),
    )
    .unwrap();
    let after = rtt(&mut app, 9).await;
    assert!(after < base + Duration::from_millis(20), "{after:?}");
    drop(app);

    // 1,000,000 bytes per second from the sender: 2 MB take 2 s (within 10%), whole.
    add(
        &c,
        json!({"kind": "shapeTunnels", "senderToListenerBytesPerSecond": 1_000_000}),
    );
    let data: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
    let t0 = Instant::now();
    assert_eq!(echo(&c, &data).await.unwrap(), data);
    let rate = data.len() as f64 / t0.elapsed().as_secs_f64();
    eprintln!("capped at 1,000,000 bytes per second: measured {rate:.0}");
    assert!(
        (900_000.0..=1_100_000.0).contains(&rate),
        "{rate:.0} bytes per second"
    );
    clear(&c);
    let t0 = Instant::now();
    assert_eq!(echo(&c, &data).await.unwrap(), data);
    assert!(t0.elapsed() < Duration::from_secs(1), "unshaped again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_requests_meet_the_chosen_status_or_time_out() {
    let echo_addr = servers::echo_server().await;
    let c = ChainBuilder::new(echo_addr.to_string())
        .relay_args(["--http-timeout", "1"])
        .start()
        .await
        .unwrap();
    let cs = ConnectionString::parse(&c.send_cs).unwrap();
    let tokens = TokenProvider::from_connection_string(&cs, Duration::from_secs(600));
    let token = tokens
        .token("localhost", HC, hc_client::now_unix())
        .unwrap()
        .expect("a key-signed token")
        .text;
    let request = |token: String| {
        let ca = c.ca.clone();
        let port = c.relay_port;
        async move {
            let tls = hc_client::tls::client_config(Some(&ca)).unwrap();
            let endpoint =
                RelayEndpoint::from_endpoint(&format!("sb://localhost:{port}/"), tls).unwrap();
            let io = endpoint.open_namespace().await.unwrap();
            hc_client::handshake::http_request(
                io,
                http::Method::GET,
                &format!("/{HC}/x"),
                &endpoint.authority(),
                &[("ServiceBusAuthorization", &token)],
                Vec::new(),
            )
            .await
            .unwrap()
        }
    };
    // The HCM answers HTTP requests with 501 (it forwards TCP only).
    assert_eq!(request(token.clone()).await.0.status, 501);
    add(
        &c,
        json!({"kind": "httpStatus", "status": 502, "reason": "Bad Gateway: injected"}),
    );
    let (head, body) = request(token.clone()).await;
    assert_eq!(head.status, 502);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Bad Gateway: injected"),
        "{body}"
    );
    clear(&c);
    add(&c, json!({"kind": "httpTimeout", "count": 1}));
    let t0 = Instant::now();
    assert_eq!(request(token.clone()).await.0.status, 504);
    assert!(t0.elapsed() >= Duration::from_millis(950));
    assert_eq!(request(token).await.0.status, 501, "the count is used up");
}

// --- The API, the Rust API and the config file, on an in-process relay. ---

async fn api(
    relay: &integration_tests::TestRelay,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, Value) {
    let addr = relay.emulator.addr;
    let method = method.to_owned();
    let path = path.to_owned();
    let body = body.map(str::to_owned);
    let ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca.path(), relay.emulator.ca_pem.as_ref().unwrap()).unwrap();
    let (status, bytes) = tokio::task::spawn_blocking(move || {
        http_request(addr, &method, &path, body.as_deref(), Some(ca.path())).unwrap()
    })
    .await
    .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_names_what_is_wrong_and_faults_show_on_status_and_metrics() {
    let relay = integration_tests::TestRelay::default_tls().await;
    let cases = [
        ("not json", 400, "the body is not a fault"),
        (r#"{"kind":"explode"}"#, 400, "unknown variant `explode`"),
        (
            r#"{"kind":"cutTunnels","bytes":1}"#,
            400,
            "unknown field `bytes`",
        ),
        (r#"{"kind":"refuseConnects"}"#, 400, "needs 'status'"),
        (
            r#"{"kind":"refuseConnects","status":200}"#,
            400,
            "400 to 599",
        ),
        (
            r#"{"kind":"dropListeners","status":503}"#,
            400,
            "'status' does not apply to a dropListeners fault",
        ),
        (
            r#"{"kind":"dropListeners","closeCode":1006}"#,
            400,
            "closeCode 1006 cannot be sent",
        ),
        (r#"{"kind":"shapeTunnels"}"#, 400, "needs latencyMs"),
        (
            r#"{"kind":"delayAccept","delayMs":10,"durationSeconds":-1}"#,
            400,
            "durationSeconds",
        ),
        (
            r#"{"kind":"stallControl","namespace":"nope"}"#,
            404,
            "no namespace 'nope'",
        ),
        (
            r#"{"kind":"stallControl","hybridConnection":"nope"}"#,
            404,
            "no namespace has a hybrid connection 'nope'",
        ),
        (
            r#"{"kind":"cutTunnels","trackingId":"t1"}"#,
            404,
            "no live tunnel has TrackingId 't1'",
        ),
    ];
    for (body, status, message) in cases {
        let (got, answer) = api(&relay, "POST", "/$faults", Some(body)).await;
        assert_eq!(got, status, "{body}: {answer}");
        let text = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(text.contains(message), "{body}: {answer}");
    }
    assert_eq!(api(&relay, "GET", "/$faults/f99", None).await.0, 404);
    assert_eq!(api(&relay, "PUT", "/$faults", Some("{}")).await.0, 405);

    // Added through the Rust API, seen through the REST API, the status page and /metrics.
    let r = &relay.emulator.relay;
    let spec = FaultSpec {
        status: Some(503),
        duration_seconds: Some(600.0),
        ..FaultSpec::new(FaultKind::RefuseConnects).on("default", "sample")
    };
    let f = r.add_fault(spec.clone()).unwrap();
    assert_eq!((f.id.as_str(), f.active), ("f1", true));
    let (_, list) = api(&relay, "GET", "/$faults", None).await;
    assert_eq!(list["faults"][0]["kind"], "refuseConnects");
    assert_eq!(list["faults"][0]["hybridConnection"], "sample");
    let (_, status) = api(&relay, "GET", "/$status/api", None).await;
    assert_eq!(status["faults"][0]["id"], "f1");
    let (_, _) = api(&relay, "GET", "/metrics", None).await;
    let addr = relay.emulator.addr;
    let ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca.path(), relay.emulator.ca_pem.as_ref().unwrap()).unwrap();
    let ca_path = ca.path().to_owned();
    let text = tokio::task::spawn_blocking(move || {
        procs::http_get(addr, "/metrics", Some(&ca_path)).unwrap().1
    })
    .await
    .unwrap();
    assert_eq!(
        metric(&text, "relay_faults_active", &[("kind", "refuseConnects")]),
        1.0
    );
    // A client that is not on loopback needs credentials, as for the status page.
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    r.serve_connection(server, SocketAddr::from(([192, 0, 2, 7], 5000)));
    client
        .write_all(b"GET /$faults HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    client.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");

    assert_eq!(
        r.clear_fault("f1").unwrap().ended.as_deref(),
        Some("cleared")
    );
    assert!(r.faults().is_empty());
    assert_eq!(r.fault("f1").unwrap().ended.as_deref(), Some("cleared"));
    assert_eq!(r.clear_faults(), 0);
}

#[tokio::test]
async fn faults_in_the_config_file_are_active_from_the_start() {
    let config = ConfigFile::parse(
        r#"{"faults": [{"kind": "refuseConnects", "status": 503, "hybridConnection": "sample"},
                       {"kind": "shapeTunnels", "latencyMs": 50}]}"#,
    )
    .unwrap();
    let relay = relay_server::Relay::in_memory(&config, RelayOptions::default()).unwrap();
    let kinds: Vec<FaultKind> = relay.faults().iter().map(|f| f.spec.kind).collect();
    assert_eq!(kinds, [FaultKind::RefuseConnects, FaultKind::ShapeTunnels]);
    let bad = ConfigFile::parse(r#"{"faults": [{"kind": "refuseConnects"}]}"#).unwrap();
    let e = relay_server::Relay::in_memory(&bad, RelayOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("fault 1 (refuseConnects)") && e.contains("needs 'status'"),
        "{e}"
    );
}

// --- Microsoft's hyco-ws meets the drop, refuse and expire faults. ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs node and npm (Microsoft's hyco-ws); --include-ignored runs it"]
async fn hyco_ws_reconnects_after_drops_and_expiry_and_sees_refusals() {
    use integration_tests::node::Peer;
    let options = RelayOptions {
        token_grace: Duration::from_secs(1),
        ..RelayOptions::default()
    };
    let relay = integration_tests::TestRelay::start("{}", true, options).await;
    let r = &relay.emulator.relay;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, relay.emulator.ca_pem.as_ref().unwrap()).unwrap();
    let key = |rule: &str| {
        (
            rule.to_owned(),
            relay
                .key("default", Some("sample"), rule)
                .expose()
                .to_owned(),
        )
    };
    let ((ln, lk), (sn, sk)) = (key("defaultListener"), key("defaultSender"));
    let listen_url = relay.url("localhost", "/$hc/sample?sb-hc-action=listen");
    let connect_url = relay.url("localhost", "/$hc/sample?sb-hc-action=connect");
    let mut listener = Peer::start("node", &["listen-echo", &listen_url], &ca, (&ln, &lk), &[]);
    listener.until("listening").await;
    let send_works = || async {
        let mut sender = Peer::start("node", &["send", &connect_url], &ca, (&sn, &sk), &[]);
        let events = sender.until("close").await;
        let echoes = events
            .iter()
            .filter(|e| e["event"] == "echo" && e["ok"] == true);
        assert_eq!(echoes.count(), 3, "{events:?}");
    };

    // Closed with 1011, then dropped without a Close: hyco-ws reconnects each time.
    let f = r
        .add_fault(FaultSpec {
            close_code: Some(1011),
            ..FaultSpec::new(FaultKind::DropListeners)
        })
        .unwrap();
    assert_eq!(f.applied, 1);
    listener.until("listening").await;
    assert_eq!(
        r.add_fault(FaultSpec::new(FaultKind::DropListeners))
            .unwrap()
            .applied,
        1
    );
    listener.until("listening").await;
    send_works().await;

    // Its token expired: the relay closes the channel with 1008 after the 1 s grace (hyco-ws
    // renews only hourly) and hyco-ws reconnects with a fresh token.
    let t0 = Instant::now();
    assert_eq!(
        r.add_fault(FaultSpec::new(FaultKind::ExpireTokens))
            .unwrap()
            .applied,
        1
    );
    listener.until("listening").await;
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t0.elapsed()
    );
    send_works().await;

    // A refused connect: hyco-ws's sender sees the status and the reason phrase.
    r.add_fault(FaultSpec {
        status: Some(503),
        count: Some(1),
        ..FaultSpec::new(FaultKind::RefuseConnects)
    })
    .unwrap();
    let mut peer = Peer::start("node", &["status", &connect_url], &ca, (&sn, &sk), &[]);
    let e = peer.until("status").await;
    let e = e.last().unwrap();
    assert_eq!(e["status"], 503, "{e}");
    assert!(
        e["reason"].as_str().unwrap().starts_with("ServerBusy"),
        "{e}"
    );
    send_works().await;
    assert_eq!(relay.emulator.relay.listener_count("default", "sample"), 1);
}

/// A request to an in-memory relay from a client that is not on loopback; status and JSON.
async fn remote(
    relay: &relay_server::Relay,
    method: &str,
    host: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> (u16, Value) {
    let (status, body) = integration_tests::mem::request_from(
        relay,
        [10, 1, 2, 3],
        method,
        host,
        path,
        headers,
        body,
    )
    .await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_manage_token_adds_and_sees_the_faults_of_its_namespace_only() {
    let config = integration_tests::mem::TWO_NAMESPACES;
    let relay = relay_server::Relay::in_memory(
        &ConfigFile::parse(config).unwrap(),
        RelayOptions::default(),
    )
    .unwrap();
    let token = integration_tests::mem::alphans_token_header;
    let manage = token("RootManageSharedAccessKey", "alphans-manage-key");
    let host = "alphans.localhost";
    // No token, or one without Manage: refused as on the status page.
    assert_eq!(remote(&relay, "GET", host, "/$faults", "", "").await.0, 401);
    let listen = token("listen-only", "alphans-listen-key");
    assert_eq!(
        remote(&relay, "GET", host, "/$faults", &listen, "").await.0,
        403
    );
    // A fault on betans and one on every namespace, added on the relay's own machine.
    relay
        .add_fault(FaultSpec {
            namespace: Some("betans".into()),
            ..FaultSpec::new(FaultKind::StallControl)
        })
        .unwrap();
    let everywhere = relay
        .add_fault(FaultSpec {
            latency_ms: Some(1),
            ..FaultSpec::new(FaultKind::ShapeTunnels)
        })
        .unwrap();
    // With Manage on alphans: a fault without a namespace is scoped to alphans; one naming
    // betans is refused; the list shows alphans's only, and clearing leaves betans's alone.
    let (status, f) = remote(
        &relay,
        "POST",
        host,
        "/$faults",
        &manage,
        r#"{"kind":"httpTimeout"}"#,
    )
    .await;
    assert_eq!(status, 201, "{f}");
    assert_eq!(f["namespace"], "alphans");
    let (status, e) = remote(
        &relay,
        "POST",
        host,
        "/$faults",
        &manage,
        r#"{"kind":"httpTimeout","namespace":"betans"}"#,
    )
    .await;
    assert_eq!(status, 403, "{e}");
    // The list shows alphans's fault and the one on every namespace (it touches alphans too).
    let (_, list) = remote(&relay, "GET", host, "/$faults", &manage, "").await;
    let scopes: Vec<&str> = list["faults"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["namespace"].as_str().unwrap_or("*"))
        .collect();
    assert_eq!(scopes, ["*", "alphans"], "{list}");
    let (status, _) = remote(&relay, "GET", host, "/$faults/f1", &manage, "").await;
    assert_eq!(status, 404, "betans's fault is not the token's to see");
    // Clearing: alphans's fault only; the one on every namespace is not the token's to clear.
    let path = format!("/$faults/{}", everywhere.id);
    let (status, e) = remote(&relay, "DELETE", host, &path, &manage, "").await;
    assert_eq!(status, 403, "{e}");
    let (status, cleared) = remote(&relay, "DELETE", host, "/$faults", &manage, "").await;
    assert_eq!(status, 200);
    assert_eq!(cleared["cleared"].as_array().unwrap().len(), 1, "{cleared}");
    let left: Vec<String> = relay
        .faults()
        .iter()
        .map(|f| f.spec.namespace.clone().unwrap_or_else(|| "*".into()))
        .collect();
    assert_eq!(left, ["betans", "*"]);
}
