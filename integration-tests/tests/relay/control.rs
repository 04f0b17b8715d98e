//! The control channel (§5) over real sockets: invalid renewals, malformed and oversize
//! commands, close echo, deletion, shutdown. Expiry, renewal and keep-alive timing are tested
//! in virtual time in `tests/components.rs`.

use futures_util::SinkExt as _;
use hc_protocol::{SasToken, control};
use integration_tests::{TestRelay, next_close};
use relay_server::RelayOptions;
use tokio_tungstenite::tungstenite::Message;

fn renew_message(relay: &TestRelay, rule: &str, expires_in: u64) -> Message {
    let key = relay.key("default", Some("sample"), rule);
    let token = SasToken::create(
        "http://localhost/sample/",
        rule,
        &key,
        relay_server::now_unix() + expires_in,
    )
    .expose();
    Message::text(control::to_json(&control::ListenerCommand::RenewToken(
        control::RenewTokenCommand { token },
    )))
}

#[tokio::test]
async fn invalid_renewal_closes_with_1008() {
    let relay = TestRelay::default_tls().await;
    let mut l = relay.listen("sample").await;
    l.control
        .send(renew_message(&relay, "defaultSender", 3600))
        .await
        .unwrap();
    let (code, reason) = next_close(&mut l.control).await.unwrap();
    assert_eq!(code, 1008);
    assert!(
        reason.contains("'Listen' claim(s) are required"),
        "{reason}"
    );
}

#[tokio::test]
async fn unknown_commands_are_ignored_and_malformed_ones_close_with_1002() {
    let relay = TestRelay::default_tls().await;
    let mut l = relay.listen("sample").await;
    l.control
        .send(Message::text(r#"{"injectFault":{"delay":"00:01:00"}}"#))
        .await
        .unwrap();
    l.control.send(Message::binary(vec![])).await.unwrap();
    l.control
        .send(Message::Ping(b"x".to_vec().into()))
        .await
        .unwrap();
    // Still serving: a sender gets an accept.
    let token = relay.send_token("sample");
    let pending = relay.raw_upgrade(
        &relay.url("localhost", "/$hc/sample"),
        &[("ServiceBusAuthorization", &token)],
    );
    let (_s, accept) = tokio::join!(pending, async {
        let a = l.next_accept().await.unwrap();
        relay
            .raw_upgrade(&format!("{}&sb-hc-statusCode=503", a.address), &[])
            .await
            .unwrap()
    });
    assert_eq!(accept.status, 410);
    l.control.send(Message::text("{not json")).await.unwrap();
    let (code, reason) = next_close(&mut l.control).await.unwrap();
    assert_eq!(code, 1002);
    assert!(reason.contains("not valid JSON"), "{reason}");
}

#[tokio::test]
async fn oversized_control_messages_close_with_1009() {
    let relay = TestRelay::default_tls().await;
    let mut l = relay.listen("sample").await;
    l.control
        .send(Message::text(
            "x".repeat(hc_protocol::limits::MAX_CONTROL_MESSAGE_BYTES + 1),
        ))
        .await
        .unwrap();
    assert_eq!(next_close(&mut l.control).await.unwrap().0, 1009);
}

#[tokio::test]
async fn listener_close_is_echoed_and_frees_its_slot() {
    let relay = TestRelay::default_tls().await;
    let mut l = relay.listen("sample").await;
    assert_eq!(relay.emulator.relay.listener_count("default", "sample"), 1);
    l.control.close(None).await.unwrap();
    assert_eq!(next_close(&mut l.control).await.unwrap().0, 1005);
    assert_eq!(relay.emulator.relay.listener_count("default", "sample"), 0);
    assert_eq!(relay.emulator.relay.connection_count("default"), 0);
}

#[tokio::test]
async fn deleting_a_hybrid_connection_closes_its_listeners_with_1001() {
    let relay = TestRelay::default_tls().await;
    let mut l = relay.listen("sample").await;
    relay
        .emulator
        .relay
        .delete_hybrid_connection("default", "sample")
        .unwrap();
    let (code, reason) = next_close(&mut l.control).await.unwrap();
    assert_eq!(
        (code, reason.as_str()),
        (1001, "The hybrid connection was deleted.")
    );
    let r = relay
        .raw_upgrade(
            &relay.url("localhost", "/$hc/sample?sb-hc-action=listen"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn shutdown_closes_listeners_and_tunnels_with_1001() {
    let relay = TestRelay::default_tls().await;
    let mut l = relay.listen("sample").await;
    let token = relay.send_token("sample");
    let url = relay.url("localhost", "/$hc/sample");
    let (s, a) = tokio::join!(
        relay.ws(&url, &[("ServiceBusAuthorization", &token)]),
        async {
            let a = l.next_accept().await.unwrap();
            l.join(&relay, &a, None).await
        }
    );
    let (mut s, mut a) = (s.unwrap(), a);
    relay.emulator.relay.shutdown();
    let (lc, sc, ac) = tokio::join!(
        next_close(&mut l.control),
        next_close(&mut s),
        next_close(&mut a)
    );
    for (code, reason) in [lc.unwrap(), sc.unwrap(), ac.unwrap()] {
        assert_eq!(
            (code, reason.as_str()),
            (1001, "The relay is shutting down.")
        );
    }
    // Polling once more sends tungstenite's close replies, so shutdown needs no grace period.
    use futures_util::StreamExt as _;
    let _ = tokio::join!(l.control.next(), s.next(), a.next());
    let started = std::time::Instant::now();
    relay.emulator.stop().await.unwrap();
    assert!(
        started.elapsed() < RelayOptions::default().shutdown_grace,
        "clean closes end the tunnel before the grace period"
    );
}
