//! listen -> connect -> accept -> data, and what the listener learns in `accept` (§5.2, §6.1).

use futures_util::SinkExt as _;
use integration_tests::{TestRelay, next_data};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn sender_and_listener_exchange_text_and_binary() {
    let relay = TestRelay::default_tls().await;
    let mut listener = relay.listen("sample").await;
    let url = relay.url(
        "localhost",
        "/$hc/sample?sb-hc-action=connect&sb-hc-id=sender-1",
    );
    let token = relay.send_token("sample");
    let sender = tokio::spawn(relay.ws(&url, &[("ServiceBusAuthorization", &token)]));
    let accept = listener.next_accept().await.unwrap();
    let mut l = listener.join(&relay, &accept, None).await;
    let mut s = sender.await.unwrap().unwrap();

    s.send(Message::text("hello")).await.unwrap();
    assert_eq!(next_data(&mut l).await.unwrap(), Message::text("hello"));
    l.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(
        next_data(&mut s).await.unwrap(),
        Message::binary(vec![1u8, 2, 3])
    );
    assert_eq!(relay.emulator.relay.listener_count("default", "sample"), 1);
}

#[tokio::test]
async fn accept_carries_address_id_headers_and_remote_endpoint() {
    let relay = TestRelay::default_tls().await;
    let mut listener = relay.listen("sample").await;
    let url = relay.url(
        "localhost",
        "/$hc/sample/sub/path?x=1&sb-hc-action=connect&sb-hc-id=abc&sb-hc-token=",
    );
    let token = relay.send_token("sample");
    let pending = tokio::spawn({
        let fut = relay.ws(
            &url,
            &[("ServiceBusAuthorization", &token), ("X-Custom", "value")],
        );
        async move { fut.await.map(|_| ()) }
    });
    let accept = listener.next_accept().await.unwrap();
    assert_eq!(accept.id, "abc_G0");
    let prefix = format!(
        "wss://localhost:{}/$hc/sample/sub/path?x=1&sb-hc-action=accept&sb-hc-id=abc_G0",
        relay.port()
    );
    assert_eq!(accept.address, prefix);
    let h = &accept.connect_headers;
    assert!(
        h.get("Sec-WebSocket-Key").is_some_and(|k| !k.is_empty()),
        "{h:?}"
    );
    assert_eq!(h.get("X-Custom"), Some("value"));
    assert_eq!(
        h.get("Host"),
        Some(format!("localhost:{}", relay.port()).as_str())
    );
    assert!(h.get("ServiceBusAuthorization").is_none());
    assert_eq!(accept.remote_endpoint.address, "127.0.0.1");
    assert!(accept.remote_endpoint.port > 0);
    // The wire JSON keeps the .NET field order and string-only headers.
    listener.join(&relay, &accept, None).await;
    pending.await.unwrap().unwrap();
}

#[tokio::test]
async fn connect_without_action_with_query_token_or_authorization_header() {
    let relay = TestRelay::default_tls().await;
    let mut listener = relay.listen("sample").await;
    let token = relay.send_token("sample");
    let encoded = hc_protocol::uri::query_encode(&token);
    let cases: [(String, Vec<(&str, &str)>); 2] = [
        (
            relay.url("localhost", &format!("/$hc/sample?sb-hc-token={encoded}")),
            vec![],
        ),
        (
            relay.url("localhost", "/$hc/sample"),
            vec![("Authorization", token.as_str())],
        ),
    ];
    for (url, headers) in cases {
        let fut = relay.ws(&url, &headers);
        let (sender, _l) = tokio::join!(fut, async {
            let accept = listener.next_accept().await.unwrap();
            assert!(!accept.address.contains("sb-hc-token"));
            assert!(
                accept.connect_headers.get("Authorization").is_none(),
                "token carrier is stripped"
            );
            listener.join(&relay, &accept, None).await
        });
        sender.unwrap();
    }
}

#[tokio::test]
async fn sub_protocol_chosen_by_listener_is_echoed_to_both() {
    let relay = TestRelay::default_tls().await;
    let mut listener = relay.listen("sample").await;
    let token = relay.send_token("sample");
    let url = relay.url("localhost", "/$hc/sample");
    let sender = relay.raw_upgrade(
        &url,
        &[
            ("ServiceBusAuthorization", &token),
            ("Sec-WebSocket-Protocol", "p1, p2"),
            ("Sec-WebSocket-Extensions", "permessage-deflate"),
        ],
    );
    let listener_side = async {
        let accept = listener.next_accept().await.unwrap();
        assert_eq!(
            accept.connect_headers.get("Sec-WebSocket-Protocol"),
            Some("p1, p2")
        );
        relay
            .raw_upgrade(&accept.address, &[("Sec-WebSocket-Protocol", "p1")])
            .await
            .unwrap()
    };
    let (s, l) = tokio::join!(sender, listener_side);
    let s = s.unwrap();
    assert_eq!((s.status, l.status), (101, 101));
    assert_eq!(
        (
            s.header("sec-websocket-protocol"),
            l.header("sec-websocket-protocol")
        ),
        (Some("p1"), Some("p1"))
    );
    assert_eq!(
        s.header("sec-websocket-extensions"),
        None,
        "never negotiate compression"
    );
}

#[tokio::test]
async fn anonymous_senders_when_client_authorization_is_off() {
    let config = r#"{"namespaces":[{"name":"default","default":true,"hybridConnections":[{"name":"open","requiresClientAuthorization":false}]}]}"#;
    let relay = TestRelay::start(config, true, Default::default()).await;
    let mut listener = relay.listen("open").await;
    let (sender, accept) =
        tokio::join!(relay.ws(&relay.url("localhost", "/$hc/open"), &[]), async {
            let a = listener.next_accept().await.unwrap();
            listener.join(&relay, &a, None).await
        });
    let (mut s, mut l) = (sender.unwrap(), accept);
    s.send(Message::text("anon")).await.unwrap();
    assert_eq!(next_data(&mut l).await.unwrap(), Message::text("anon"));
    // Listeners still need a token.
    let r = relay
        .raw_upgrade(
            &relay.url("localhost", "/$hc/open?sb-hc-action=listen"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn rejected_connections_get_the_listeners_status_and_reason() {
    let relay = TestRelay::default_tls().await;
    let mut listener = relay.listen("sample").await;
    let token = relay.send_token("sample");
    let url = relay.url("localhost", "/$hc/sample");
    for (suffix, status, reason) in [
        (
            "&sb-hc-statusCode=401&sb-hc-statusDescription=Go%20away%2C%20please",
            401,
            "Go away, please",
        ),
        (
            "&statusCode=502&statusDescription=Backend+down",
            502,
            "Backend down",
        ),
        ("&sb-hc-statusCode=400", 400, "Bad Request"),
    ] {
        let sender = relay.raw_upgrade(&url, &[("ServiceBusAuthorization", &token)]);
        let reject = async {
            let accept = listener.next_accept().await.unwrap();
            relay
                .raw_upgrade(&format!("{}{suffix}", accept.address), &[])
                .await
                .unwrap()
        };
        let (s, l) = tokio::join!(sender, reject);
        let s = s.unwrap();
        assert_eq!(l.status, 410, "listener gets Gone");
        assert_eq!((s.status, s.reason.as_str()), (status, reason));
    }
}

#[tokio::test]
async fn rendezvous_address_is_single_use_and_expires() {
    let options = relay_server::RelayOptions {
        rendezvous_timeout: std::time::Duration::from_millis(300),
        ..Default::default()
    };
    let relay = TestRelay::start("{}", true, options).await;
    let mut listener = relay.listen("sample").await;
    let token = relay.send_token("sample");
    let url = relay.url("localhost", "/$hc/sample?sb-hc-id=late");
    // The listener never joins: the sender gets 504 when the rendezvous expires.
    let (s, accept) = tokio::join!(
        relay.raw_upgrade(&url, &[("ServiceBusAuthorization", &token)]),
        listener.next_accept()
    );
    let s = s.unwrap();
    assert_eq!(s.status, 504);
    assert!(
        s.reason.starts_with("The listener did not accept the connection within the allowed timeout. TrackingId:late_G0"),
        "{}",
        s.reason
    );
    let late = relay
        .raw_upgrade(&accept.unwrap().address, &[])
        .await
        .unwrap();
    assert_eq!(late.status, 403);
    assert!(late.reason.contains("invalid or has expired"));
    assert_eq!(relay.emulator.relay.pending_rendezvous(), 0);

    // Used once, it cannot be used again.
    let url = relay.url("localhost", "/$hc/sample?sb-hc-id=once");
    let (s, accept) = tokio::join!(
        relay.ws(&url, &[("ServiceBusAuthorization", &token)]),
        async {
            let a = listener.next_accept().await.unwrap();
            let _l = listener.join(&relay, &a, None).await;
            a
        }
    );
    s.unwrap();
    assert_eq!(
        relay
            .raw_upgrade(&accept.address, &[])
            .await
            .unwrap()
            .status,
        403
    );
}

#[tokio::test]
async fn listeners_are_chosen_at_random() {
    let relay = TestRelay::default_tls().await;
    let mut a = relay.listen("sample").await;
    let mut b = relay.listen("sample").await;
    let token = relay.send_token("sample");
    let url = relay.url("localhost", "/$hc/sample");
    let (mut to_a, mut to_b) = (0, 0);
    for _ in 0..40 {
        let sender = tokio::spawn(relay.raw_upgrade(&url, &[("ServiceBusAuthorization", &token)]));
        let accept = tokio::select! {
            acc = a.next_accept() => { to_a += 1; acc.unwrap() }
            acc = b.next_accept() => { to_b += 1; acc.unwrap() }
        };
        let rejected = relay
            .raw_upgrade(&format!("{}&sb-hc-statusCode=404", accept.address), &[])
            .await
            .unwrap();
        assert_eq!(rejected.status, 410);
        assert_eq!(sender.await.unwrap().unwrap().status, 404);
    }
    assert!(
        to_a > 0 && to_b > 0,
        "both listeners get connections: {to_a} / {to_b}"
    );
}
