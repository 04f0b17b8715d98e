//! Every error status of the WebSocket endpoints with its reason phrase shape (§9.1, §9.3).

use hc_protocol::{SasKey, SasToken};
use integration_tests::TestRelay;

/// A raw listen request for `sample` with a valid token; returns the relay's answer.
async fn listen_attempt(relay: &TestRelay) -> integration_tests::raw::Handshake {
    let url = relay.url("localhost", "/$hc/sample?sb-hc-action=listen");
    relay
        .raw_upgrade(
            &url,
            &[("ServiceBusAuthorization", &relay.listen_token("sample"))],
        )
        .await
        .unwrap()
}

fn assert_tracked(reason: &str, starts: &str, path: &str) {
    assert!(
        reason.starts_with(starts),
        "reason {reason:?} should start with {starts:?}"
    );
    assert!(
        reason.contains(" TrackingId:")
            && reason.contains(&format!("SystemTracker:sb://localhost/{path}"))
            && reason.contains("Timestamp:"),
        "{reason}"
    );
}

#[tokio::test]
async fn no_listener_and_unknown_endpoint_are_404() {
    let relay = TestRelay::default_tls().await;
    let token = relay.send_token("sample");
    let r = relay
        .raw_upgrade(
            &relay.url("localhost", "/$hc/sample?sb-hc-id=x1"),
            &[("ServiceBusAuthorization", &token)],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    assert_tracked(
        &r.reason,
        "There are no listeners connected for the endpoint. TrackingId:x1_G0",
        "sample",
    );
    let r = relay
        .raw_upgrade(
            &relay.url("localhost", "/$hc/missing?sb-hc-action=listen"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    assert_tracked(&r.reason, "Endpoint does not exist.", "missing");
}

#[tokio::test]
async fn bad_tokens_are_401_and_missing_rights_403() {
    let relay = TestRelay::default_tls().await;
    let listen_url = relay.url("localhost", "/$hc/sample?sb-hc-action=listen");
    let key = relay.key("default", Some("sample"), "defaultListener");
    let now = relay_server::now_unix();
    let expired = SasToken::create(
        "http://localhost/sample/",
        "defaultListener",
        &key,
        now - 3600,
    )
    .expose();
    let wrong_key = SasToken::create(
        "http://localhost/sample/",
        "defaultListener",
        &SasKey::new("nope").unwrap(),
        now + 60,
    )
    .expose();
    let wrong_audience =
        SasToken::create("http://localhost/other/", "defaultListener", &key, now + 60).expose();
    let cases = [
        (None, 401, "MissingToken:"),
        (Some("Bearer abc".to_owned()), 401, "MalformedToken:"),
        (Some(expired), 401, "ExpiredToken:"),
        (Some(wrong_key), 401, "InvalidSignature:"),
        (Some(wrong_audience), 401, "InvalidAudience:"),
        (
            Some(relay.send_token("sample")),
            403,
            "Unauthorized access. 'Listen' claim(s) are required",
        ),
    ];
    for (token, status, starts) in cases {
        let headers: Vec<(&str, &str)> = token
            .as_deref()
            .map(|t| ("ServiceBusAuthorization", t))
            .into_iter()
            .collect();
        let r = relay.raw_upgrade(&listen_url, &headers).await.unwrap();
        assert_eq!(r.status, status, "{starts}: {}", r.reason);
        assert_tracked(&r.reason, starts, "sample");
    }
}

#[tokio::test]
async fn other_hybrid_connections_rule_is_refused() {
    let config = r#"{"namespaces":[{"name":"default","default":true,"hybridConnections":[{"name":"a"},{"name":"b"}]}]}"#;
    let relay = TestRelay::start(config, true, Default::default()).await;
    let token = relay.token("localhost", "b", "default", Some("a"), "defaultListener");
    let r = relay
        .raw_upgrade(
            &relay.url("localhost", "/$hc/b?sb-hc-action=listen"),
            &[("ServiceBusAuthorization", &token)],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 401, "{}", r.reason);
}

#[tokio::test]
async fn bad_requests_are_400() {
    let relay = TestRelay::default_tls().await;
    let r = relay
        .raw_upgrade(
            &relay.url("localhost", "/$hc/sample?sb-hc-action=dance"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert!(
        r.reason.starts_with("Unrecognized action 'dance'"),
        "{}",
        r.reason
    );
    // A plain GET to a WebSocket endpoint names the missing upgrade.
    let mut stream = relay.stream("localhost").await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET /$hc/sample HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).await.ok();
    assert!(out.starts_with("HTTP/1.1 400 This endpoint takes WebSocket upgrades only: missing 'Upgrade: websocket'."), "{out}");
}

#[tokio::test]
async fn the_26th_listener_is_refused() {
    let relay = TestRelay::default_tls().await;
    let mut listeners = Vec::new();
    for _ in 0..25 {
        listeners.push(relay.listen("sample").await);
    }
    let r = listen_attempt(&relay).await;
    assert_eq!(r.status, 403);
    assert!(
        r.reason
            .starts_with("QuotaExceeded: MaximumListenersPerEndpoint"),
        "{}",
        r.reason
    );
    drop(listeners.pop());
    // Once the relay notices the closed channel, a slot is free again.
    let mut tries = 0;
    while relay.emulator.relay.listener_count("default", "sample") > 24 {
        tries += 1;
        assert!(tries < 500, "listener slot never freed");
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    relay.listen("sample").await;
}

#[tokio::test]
async fn namespace_connection_quota() {
    let options = relay_server::RelayOptions {
        max_connections_per_namespace: 2,
        ..Default::default()
    };
    let relay = TestRelay::start("{}", true, options).await;
    let _a = relay.listen("sample").await;
    let _b = relay.listen("sample").await;
    let r = listen_attempt(&relay).await;
    assert_eq!(r.status, 403);
    assert!(
        r.reason
            .starts_with("QuotaExceeded: the namespace already has 2 connections."),
        "{}",
        r.reason
    );
}

#[tokio::test]
async fn silent_clients_are_dropped_after_the_handshake_timeout() {
    let options = relay_server::RelayOptions {
        handshake_timeout: std::time::Duration::from_millis(200),
        ..Default::default()
    };
    let relay = TestRelay::start("{}", false, options).await;
    let mut tcp = tokio::net::TcpStream::connect(relay.emulator.addr)
        .await
        .unwrap();
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .expect("relay closes a silent client");
    assert!(n.map(|n| n < buf.len()).unwrap_or(true));
    // Same over TLS: a client that never sends a ClientHello is dropped.
    let relay = TestRelay::start(
        "{}",
        true,
        relay_server::RelayOptions {
            handshake_timeout: std::time::Duration::from_millis(200),
            ..Default::default()
        },
    )
    .await;
    let mut tcp = tokio::net::TcpStream::connect(relay.emulator.addr)
        .await
        .unwrap();
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .expect("relay drops a silent TLS client");
    assert_eq!(n.unwrap_or(0), 0);
}

#[tokio::test]
async fn oversized_request_heads_are_refused() {
    let relay = TestRelay::default_tls().await;
    let big = "x".repeat(20 * 1024);
    let r = relay
        .raw_upgrade(&relay.url("localhost", "/$hc/sample"), &[("X-Big", &big)])
        .await;
    match r {
        Ok(h) => assert_eq!(h.status, 431, "{h:?}"),
        Err(e) => assert!(e.to_string().contains("closed"), "{e}"),
    }
}

#[tokio::test]
async fn too_many_waiting_senders_get_503() {
    let options = relay_server::RelayOptions {
        max_pending_rendezvous: 1,
        ..Default::default()
    };
    let relay = TestRelay::start("{}", true, options).await;
    let mut listener = relay.listen("sample").await;
    let token = relay.send_token("sample");
    let url = relay.url("localhost", "/$hc/sample");
    let first = tokio::spawn(relay.raw_upgrade(&url, &[("ServiceBusAuthorization", &token)]));
    let accept = listener.next_accept().await.unwrap();
    let second = relay
        .raw_upgrade(&url, &[("ServiceBusAuthorization", &token)])
        .await
        .unwrap();
    assert_eq!(second.status, 503);
    assert!(
        second.reason.starts_with("ServerBusy:"),
        "{}",
        second.reason
    );
    relay
        .raw_upgrade(&format!("{}&sb-hc-statusCode=409", accept.address), &[])
        .await
        .unwrap();
    assert_eq!(first.await.unwrap().unwrap().status, 409);
}
