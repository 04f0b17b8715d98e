//! The relay's control channel and HTTP request mode, `hc-client`'s listener and the HCM's
//! renewal and keep-alive, over in-memory connections with tokio's time paused: tokens
//! expire, pings go unanswered and HTTP deadlines pass in virtual time, so no test here
//! sleeps to outwait one. The relay's clock follows tokio's, so token expiries (Unix
//! seconds) move with it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use hc_client::listener::{ControlChannel, ControlEvent, ListenerConfig};
use hc_client::token::TokenProvider;
use hc_protocol::ConnectionString;
use hc_ws::{Config, Item, Role};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use integration_tests::mem::MemRelay;
use relay_server::RelayOptions;
use tokio::time::Instant;

const START: u64 = 1_800_000_000;

fn options() -> RelayOptions {
    RelayOptions {
        clock: hc_client::Clock::following_tokio(START),
        token_grace: Duration::from_secs(5),
        listener_keepalive: Some(Duration::from_secs(30)),
        ..RelayOptions::default()
    }
}

fn listener_config(relay: &MemRelay, ttl: Duration) -> ListenerConfig {
    let cs =
        ConnectionString::parse(&relay.connection_string("sample", "defaultListener")).unwrap();
    ListenerConfig {
        endpoint: relay.endpoint(),
        path: "sample".into(),
        tokens: TokenProvider::from_connection_string(&cs, ttl),
        tracking_id: "component".into(),
    }
}

/// Reads the channel until `until`, sending queued Pongs; returns the first event that is not
/// a Ping (or `None` when `until` came first).
async fn next_event_before(channel: &mut ControlChannel, until: Instant) -> Option<ControlEvent> {
    loop {
        let ready = channel.control_ready();
        tokio::select! {
            e = channel.next_event() => match e.unwrap() {
                ControlEvent::Ping => continue,
                other => return Some(other),
            },
            _ = ready => channel.flush_control().await.unwrap(),
            _ = tokio::time::sleep_until(until) => return None,
        }
    }
}

#[tokio::test(start_paused = true)]
async fn an_expired_channel_closes_after_the_grace_period_and_a_renewal_moves_it() {
    let relay = MemRelay::new("{}", options());
    let t0 = Instant::now();
    let mut channel = ControlChannel::open(&listener_config(&relay, Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(relay.relay.listener_count("default", "sample"), 1);
    // The token lives 10 s; the relay's grace is 5 s. Nothing happens before 15 s.
    assert!(
        next_event_before(&mut channel, t0 + Duration::from_secs(14))
            .await
            .is_none()
    );
    match next_event_before(&mut channel, t0 + Duration::from_secs(17)).await {
        Some(ControlEvent::Closed {
            code: Some(1008),
            reason,
        }) => assert!(reason.starts_with("ExpiredToken:"), "{reason}"),
        other => panic!("expected 1008, got {other:?}"),
    }

    // A renewal before expiry moves the deadline: renewed at 8 s for 100 s more.
    let t0 = Instant::now();
    let config = listener_config(&relay, Duration::from_secs(10));
    let mut channel = ControlChannel::open(&config).await.unwrap();
    assert!(
        next_event_before(&mut channel, t0 + Duration::from_secs(8))
            .await
            .is_none()
    );
    let token = config
        .tokens
        .token("localhost", "sample", relay.clock().unix_now() + 90)
        .unwrap()
        .unwrap();
    channel.renew(token).await.unwrap();
    assert!(
        next_event_before(&mut channel, t0 + Duration::from_secs(100))
            .await
            .is_none(),
        "still open at 100 s"
    );
    assert!(matches!(
        next_event_before(&mut channel, t0 + Duration::from_secs(120)).await,
        Some(ControlEvent::Closed {
            code: Some(1008),
            ..
        })
    ));
}

#[tokio::test(start_paused = true)]
async fn an_invalid_renewal_closes_with_1008() {
    let relay = MemRelay::new("{}", options());
    let mut channel = ControlChannel::open(&listener_config(&relay, Duration::from_secs(3600)))
        .await
        .unwrap();
    let sender =
        ConnectionString::parse(&relay.connection_string("sample", "defaultSender")).unwrap();
    let wrong = TokenProvider::from_connection_string(&sender, Duration::from_secs(3600))
        .token("localhost", "sample", relay.clock().unix_now())
        .unwrap()
        .unwrap();
    channel.renew(wrong).await.unwrap();
    match next_event_before(&mut channel, Instant::now() + Duration::from_secs(5)).await {
        Some(ControlEvent::Closed {
            code: Some(1008),
            reason,
        }) => assert!(reason.contains("'Listen' claim"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

/// A listener that reads but never answers the relay's pings is dropped after two
/// unanswered pings (§5.4): at the third keep-alive interval.
#[tokio::test(start_paused = true)]
async fn a_listener_that_answers_no_ping_is_dropped() {
    let relay = MemRelay::new("{}", options());
    let t0 = Instant::now();
    let mut channel = ControlChannel::open(&listener_config(&relay, Duration::from_secs(3600)))
        .await
        .unwrap();
    let ended = loop {
        match channel.next_event().await {
            Ok(ControlEvent::Ping) => continue, // read, never answered
            Ok(other) => panic!("{other:?}"),
            Err(e) => break e,
        }
    };
    assert!(ended.is_network(), "dropped without a close frame: {ended}");
    assert_eq!(t0.elapsed(), Duration::from_secs(90));
    assert_eq!(relay.relay.listener_count("default", "sample"), 0);
}

/// A listener that stops reading cannot take the relay's writes: it is dropped within the
/// write deadline (the keep-alive period) and its senders are not left waiting.
#[tokio::test(start_paused = true)]
async fn a_listener_that_stops_reading_is_dropped_within_the_write_deadline() {
    let relay = MemRelay::new("{}", options());
    let t0 = Instant::now();
    let _stuck = ControlChannel::open(&listener_config(&relay, Duration::from_secs(3600)))
        .await
        .unwrap();
    let sender_cs =
        ConnectionString::parse(&relay.connection_string("sample", "defaultSender")).unwrap();
    let tokens = TokenProvider::from_connection_string(&sender_cs, Duration::from_secs(3600));
    // Senders fill the listener's pipe with accepts until writes to it block.
    let endpoint = relay.endpoint();
    let senders: Vec<_> = (0..3000)
        .map(|i| {
            let (endpoint, tokens) = (endpoint.clone(), tokens.clone());
            tokio::spawn(async move {
                hc_client::sender::connect(&endpoint, "sample", &tokens, &format!("s{i}"))
                    .await
                    .err()
            })
        })
        .collect();
    for s in senders {
        let err = s.await.unwrap().expect("no sender got through");
        assert!(
            err.status()
                .is_some_and(|s| s == 502 || s == 404 || s == 504),
            "{err}"
        );
    }
    assert_eq!(relay.relay.listener_count("default", "sample"), 0);
    assert!(
        t0.elapsed() <= Duration::from_secs(31),
        "dropped within the 30 s write deadline, not after the 30 s rendezvous timeout: {:?}",
        t0.elapsed()
    );
}

/// An HTTP request through an in-memory connection: status, `Via`, body.
async fn http_get(relay: &MemRelay, target: &str, token: &str) -> (u16, Option<String>, String) {
    let io = hyper_util::rt::TokioIo::new(relay.connect());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get(target)
        .header("Host", "localhost")
        .header("ServiceBusAuthorization", token)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let via = resp
        .headers()
        .get("via")
        .map(|v| v.to_str().unwrap().to_owned());
    let body =
        String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).into_owned();
    (status, via, body)
}

fn send_token(relay: &MemRelay) -> String {
    let cs = ConnectionString::parse(&relay.connection_string("sample", "defaultSender")).unwrap();
    TokenProvider::from_connection_string(&cs, Duration::from_secs(3600))
        .token("localhost", "sample", relay.clock().unix_now())
        .unwrap()
        .unwrap()
        .text
}

/// HTTP mode: an answered request, and one the listener leaves unanswered, which gets 504
/// after the 60 s first-response deadline (§8.2), in virtual time.
#[tokio::test(start_paused = true)]
async fn http_mode_answers_and_times_out() {
    let relay = MemRelay::new("{}", options());
    let mut channel = ControlChannel::open(&listener_config(&relay, Duration::from_secs(3600)))
        .await
        .unwrap();
    let token = send_token(&relay);
    let answered = std::sync::atomic::AtomicUsize::new(0);
    let listener = async {
        loop {
            let ready = channel.control_ready();
            tokio::select! {
                e = channel.next_event() => match e.unwrap() {
                    ControlEvent::Request(r) if r.request_target.as_deref() == Some("/sample/answer") => {
                        let request = channel.read_request(r).await.unwrap();
                        let response = hc_client::http::HttpResponse { status: 201, reason: Some("Made".into()), ..Default::default() };
                        channel.respond(&relay.endpoint(), &request, &response).await.unwrap();
                        answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    ControlEvent::Request(_) => {} // left unanswered
                    _ => {}
                },
                _ = ready => channel.flush_control().await.unwrap(),
            }
        }
    };
    let client = async {
        let (status, via, _) = http_get(&relay, "/sample/answer", &token).await;
        assert_eq!((status, via.as_deref()), (201, Some("1.1 localhost")));
        let t0 = Instant::now();
        let (status, via, body) = http_get(&relay, "/sample/silence", &token).await;
        assert_eq!((status, via), (504, None), "relay-made errors carry no Via");
        let e: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(e["error"]["code"], "GatewayTimeout");
        let message = e["error"]["message"].as_str().unwrap();
        assert!(
            message
                .starts_with("The request was routed to the listener but the listener did not respond in the required time. TrackingId:"),
            "{message}"
        );
        assert_eq!(t0.elapsed(), Duration::from_secs(60));
    };
    tokio::select! {
        () = listener => unreachable!("the listener serves until the client is done"),
        () = client => {}
    }
    assert_eq!(answered.into_inner(), 1);
}

/// A response with a status the client must not see is answered with 502 at once.
#[tokio::test(start_paused = true)]
async fn http_mode_refuses_an_informational_status() {
    let relay = MemRelay::new("{}", options());
    let mut channel = ControlChannel::open(&listener_config(&relay, Duration::from_secs(3600)))
        .await
        .unwrap();
    let token = send_token(&relay);
    let listener = async {
        if let ControlEvent::Request(r) = channel.next_event().await.unwrap() {
            let request = channel.read_request(r).await.unwrap();
            let response = hc_client::http::HttpResponse {
                status: 101,
                ..Default::default()
            };
            channel
                .respond(&relay.endpoint(), &request, &response)
                .await
                .unwrap();
        }
    };
    let (_, (status, _, _)) = tokio::join!(listener, http_get(&relay, "/sample/x", &token));
    assert_eq!(status, 502);
}

/// A request body that stops arriving gets 408 after the HTTP timeout (60 s, virtual).
#[tokio::test(start_paused = true)]
async fn a_stalled_request_body_gets_a_408() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let relay = MemRelay::new("{}", options());
    let mut channel = ControlChannel::open(&listener_config(&relay, Duration::from_secs(3600)))
        .await
        .unwrap();
    let endpoint = relay.endpoint();
    let listener = async {
        loop {
            let ready = channel.control_ready();
            tokio::select! {
                e = channel.next_event() => if let Ok(ControlEvent::Request(r)) = e {
                    let endpoint = endpoint.clone();
                    tokio::spawn(async move {
                        let _ = hc_client::http::serve_rendezvous(&endpoint, &r.address, |_| hc_client::http::HttpResponse { status: 200, ..Default::default() }).await;
                    });
                },
                _ = ready => channel.flush_control().await.unwrap(),
            }
        }
    };
    let client = async {
        let mut io = relay.connect();
        let head = format!(
            "POST /sample/echo HTTP/1.1\r\nHost: localhost\r\nServiceBusAuthorization: {}\r\nContent-Length: 100000\r\n\r\n",
            send_token(&relay)
        );
        io.write_all(head.as_bytes()).await.unwrap();
        io.write_all(&[1u8; 70_000]).await.unwrap();
        // ... and the remaining 30,000 bytes never come.
        let t0 = Instant::now();
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = io.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed without an answer");
            answer.extend_from_slice(&buf[..n]);
        }
        (String::from_utf8_lossy(&answer).into_owned(), t0.elapsed())
    };
    let (text, took) = tokio::select! {
        () = listener => unreachable!(),
        r = client => r,
    };
    assert!(
        text.starts_with("HTTP/1.1 408 The request body stopped arriving"),
        "{text}"
    );
    assert_eq!(took, Duration::from_secs(60));
}

/// An HCM worker serving `sample` of `relay` through in-memory connections, on the relay's
/// clock; its status board, its entry's key and its stop.
struct Worker {
    board: std::sync::Arc<hcm::status::Board>,
    key: String,
    cancel: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<hcm::worker::WorkerEnd>,
    _dir: tempfile::TempDir,
}

impl Worker {
    fn start(relay: &MemRelay, options: hcm::worker::WorkerOptions) -> Worker {
        let dir = tempfile::tempdir().unwrap();
        let board = std::sync::Arc::new(hcm::status::Board::new(dir.path()));
        let entry = hcm::config::Entry::new(
            &relay.connection_string("sample", "defaultListener"),
            Some("127.0.0.1:9".into()),
            1,
            None,
        )
        .unwrap();
        let options = hcm::worker::WorkerOptions {
            clock: relay.clock(),
            connector: Some(relay.connector()),
            ..options
        };
        let cancel = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(hcm::worker::run(
            entry.clone(),
            board.clone(),
            options,
            tokio_util::task::TaskTracker::new(),
            cancel.clone(),
        ));
        Worker {
            board,
            key: entry.key(),
            cancel,
            task,
            _dir: dir,
        }
    }

    fn status(&self) -> hcm::status::HcStatus {
        self.board.get(&self.key).unwrap()
    }

    async fn stop(self) {
        self.cancel.cancel();
        self.task.await.unwrap();
    }
}

/// The HCM renews its token before it expires: over 10 virtual minutes with 20 s tokens and
/// a 5 s grace, its one control channel stays open.
#[tokio::test(start_paused = true)]
async fn the_hcm_renews_and_never_reconnects() {
    let relay = MemRelay::new("{}", options());
    let worker = Worker::start(
        &relay,
        hcm::worker::WorkerOptions {
            token_ttl: Duration::from_secs(20),
            ..Default::default()
        },
    );
    tokio::time::sleep(Duration::from_secs(600)).await;
    let status = worker.status();
    assert_eq!(
        (status.connects, status.channels_open),
        (1, 1),
        "{status:?}"
    );
    // Renewed at 80% of each 20 s token: about 37 times in 600 s; never lost.
    assert!((35..=38).contains(&status.token_renewals), "{status:?}");
    assert_eq!(status.channel_losses, 0);
    // The relay's listener count is asked again periodically, not only at connect.
    assert_eq!(status.relay_listener_count, Some(1));
    assert_eq!(relay.relay.listener_count("default", "sample"), 1);
    worker.stop().await;
}

/// An HCM whose relay hangs (connections stop carrying bytes) notices within two keep-alive
/// intervals and reconnects once the relay answers again.
#[tokio::test(start_paused = true)]
async fn the_hcm_notices_a_silent_relay_and_reconnects() {
    let relay = MemRelay::new(
        "{}",
        RelayOptions {
            listener_keepalive: None,
            ..options()
        },
    );
    let worker = Worker::start(
        &relay,
        hcm::worker::WorkerOptions {
            keepalive: Duration::from_secs(10),
            ..Default::default()
        },
    );
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert_eq!(worker.status().connects, 1);
    relay.freeze();
    tokio::time::sleep(Duration::from_secs(31)).await;
    let down = worker.status();
    assert_eq!(down.channels_open, 0, "{down:?}");
    assert!(
        down.last_error
            .as_deref()
            .is_some_and(|e| e.contains("keep-alive")),
        "{down:?}"
    );
    relay.thaw();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let up = worker.status();
    assert!(up.connects >= 2 && up.channels_open == 1, "{up:?}");
    assert!(up.channel_losses >= 1, "{up:?}");
    worker.stop().await;
}

/// The client's bridge against a relay-side endpoint driven by the test: data both ways,
/// the relay's Ping answered while the TCP side is idle, half-close in both orders.
#[tokio::test]
async fn the_bridge_half_closes_and_answers_pings_while_idle() {
    let (relay_side, client_side) = tokio::io::duplex(1024);
    let (app, bridge_side) = tokio::io::duplex(1024);
    let bridge = tokio::spawn(async move {
        let (mut r, mut w) = tokio::io::split(bridge_side);
        hc_client::bridge::pump_both(client_side, &[], &mut r, &mut w, 4096).await
    });
    let (mut rr, mut rw) = hc_ws::split(relay_side, Config::new(Role::Server));
    let (mut app_r, mut app_w) = tokio::io::split(app);
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    rw.ping(b"idle?").await.unwrap();
    assert_eq!(
        rr.next_item().await.unwrap(),
        Some(Item::Pong),
        "answered with no TCP traffic"
    );
    rw.send(hc_protocol::frame::OpCode::Binary, b"to the endpoint")
        .await
        .unwrap();
    let mut buf = [0u8; 15];
    app_r.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"to the endpoint");
    // The relay closes first (the sender shut down); the endpoint still answers.
    rw.close(&hc_protocol::frame::CloseFrame::new(1000, "Shutdown"))
        .await
        .unwrap();
    assert_eq!(
        app_r.read(&mut buf).await.unwrap(),
        0,
        "EOF on the TCP side"
    );
    app_w.write_all(b"answer").await.unwrap();
    app_w.shutdown().await.unwrap();
    let mut got = Vec::new();
    loop {
        match rr.next_item().await.unwrap() {
            Some(Item::Data(h)) => {
                let mut done = 0;
                while done < h.payload_len {
                    got.extend_from_slice(rr.data_chunk(&h, &mut done).await.unwrap());
                }
            }
            Some(Item::Close(c)) => {
                assert_eq!(c.code, Some(1000));
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got, b"answer");
    let report = bridge.await.unwrap();
    assert_eq!(
        (report.to_tcp, report.from_tcp, report.aborted),
        (15, 6, None)
    );
}
