//! The control channel (§5): token renewal and expiry, deletion, shutdown, limits.

use std::time::Duration;

use futures_util::SinkExt as _;
use hc_protocol::{SasToken, control};
use integration_tests::{TestListener, TestRelay, next_close, next_data};
use relay_server::RelayOptions;
use tokio_tungstenite::tungstenite::Message;

fn quick_grace() -> RelayOptions {
    RelayOptions { token_grace: Duration::from_millis(300), ..Default::default() }
}

async fn listener_with_token(relay: &TestRelay, expires_in: u64) -> TestListener {
    let key = relay.key("default", Some("sample"), "defaultListener");
    let token = SasToken::create("http://localhost/sample/", "defaultListener", &key, relay_server::now_unix() + expires_in).expose();
    let url = relay.url("localhost", "/$hc/sample?sb-hc-action=listen");
    TestListener { control: relay.ws(&url, &[("ServiceBusAuthorization", &token)]).await.unwrap() }
}

fn renew_message(relay: &TestRelay, rule: &str, expires_in: u64) -> Message {
    let key = relay.key("default", Some("sample"), rule);
    let token = SasToken::create("http://localhost/sample/", rule, &key, relay_server::now_unix() + expires_in).expose();
    Message::text(control::to_json(&control::ListenerCommand::RenewToken(control::RenewTokenCommand { token })))
}

#[tokio::test]
async fn expired_control_channel_is_closed_with_1008_after_the_grace_period() {
    let relay = TestRelay::start("{}", true, quick_grace()).await;
    let mut l = listener_with_token(&relay, 1).await;
    let (code, reason) = next_close(&mut l.control).await.unwrap();
    assert_eq!(code, 1008);
    assert!(reason.starts_with("ExpiredToken:"), "{reason}");
}

#[tokio::test]
async fn renewal_keeps_the_listener_past_its_first_tokens_expiry() {
    let relay = TestRelay::start("{}", true, quick_grace()).await;
    let mut l = listener_with_token(&relay, 1).await;
    l.control.send(renew_message(&relay, "defaultListener", 3600)).await.unwrap();
    // Wait out the first token (1 s) plus the grace (0.3 s), with a margin for the second boundary.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let token = relay.send_token("sample");
    let url = relay.url("localhost", "/$hc/sample");
    let (s, accept) = tokio::join!(relay.ws(&url, &[("ServiceBusAuthorization", &token)]), async {
        let a = l.next_accept().await.unwrap();
        l.join(&relay, &a, None).await
    });
    let (mut s, mut a) = (s.unwrap(), accept);
    s.send(Message::text("still here")).await.unwrap();
    assert_eq!(next_data(&mut a).await.unwrap(), Message::text("still here"));
}

#[tokio::test]
async fn invalid_renewal_closes_with_1008() {
    let relay = TestRelay::default_tls().await;
    let mut l = relay.listen("sample").await;
    l.control.send(renew_message(&relay, "defaultSender", 3600)).await.unwrap();
    let (code, reason) = next_close(&mut l.control).await.unwrap();
    assert_eq!(code, 1008);
    assert!(reason.contains("'Listen' claim(s) are required"), "{reason}");
}

#[tokio::test]
async fn unknown_commands_are_ignored_and_malformed_ones_close_with_1002() {
    let relay = TestRelay::default_tls().await;
    let mut l = relay.listen("sample").await;
    l.control.send(Message::text(r#"{"injectFault":{"delay":"00:01:00"}}"#)).await.unwrap();
    l.control.send(Message::binary(vec![])).await.unwrap();
    l.control.send(Message::Ping(b"x".to_vec().into())).await.unwrap();
    // Still serving: a sender gets an accept.
    let token = relay.send_token("sample");
    let pending = relay.raw_upgrade(&relay.url("localhost", "/$hc/sample"), &[("ServiceBusAuthorization", &token)]);
    let (_s, accept) = tokio::join!(pending, async {
        let a = l.next_accept().await.unwrap();
        relay.raw_upgrade(&format!("{}&sb-hc-statusCode=503", a.address), &[]).await.unwrap()
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
    l.control.send(Message::text("x".repeat(hc_protocol::limits::MAX_CONTROL_MESSAGE_BYTES + 1))).await.unwrap();
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
    relay.emulator.relay.delete_hybrid_connection("default", "sample").unwrap();
    let (code, reason) = next_close(&mut l.control).await.unwrap();
    assert_eq!((code, reason.as_str()), (1001, "The hybrid connection was deleted."));
    let r = relay.raw_upgrade(&relay.url("localhost", "/$hc/sample?sb-hc-action=listen"), &[]).await.unwrap();
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn shutdown_closes_listeners_and_tunnels_with_1001() {
    let relay = TestRelay::default_tls().await;
    let mut l = relay.listen("sample").await;
    let token = relay.send_token("sample");
    let url = relay.url("localhost", "/$hc/sample");
    let (s, a) = tokio::join!(relay.ws(&url, &[("ServiceBusAuthorization", &token)]), async {
        let a = l.next_accept().await.unwrap();
        l.join(&relay, &a, None).await
    });
    let (mut s, mut a) = (s.unwrap(), a);
    relay.emulator.relay.shutdown();
    let (lc, sc, ac) = tokio::join!(next_close(&mut l.control), next_close(&mut s), next_close(&mut a));
    for (code, reason) in [lc.unwrap(), sc.unwrap(), ac.unwrap()] {
        assert_eq!((code, reason.as_str()), (1001, "The relay is shutting down."));
    }
    // Polling once more sends tungstenite's close replies, so shutdown needs no grace period.
    use futures_util::StreamExt as _;
    let _ = tokio::join!(l.control.next(), s.next(), a.next());
    let started = std::time::Instant::now();
    relay.emulator.stop().await.unwrap();
    assert!(started.elapsed() < RelayOptions::default().shutdown_grace, "clean closes end the tunnel before the grace period");
}

#[tokio::test]
async fn listeners_that_stop_answering_pings_are_dropped() {
    use futures_util::StreamExt as _;
    let options = RelayOptions { listener_keepalive: Some(Duration::from_millis(250)), ..Default::default() };
    let relay = TestRelay::start("{}", true, options).await;
    // tokio-tungstenite answers pings while it is read: this listener stays.
    let alive = relay.listen("sample").await;
    let watcher = tokio::spawn(async move {
        let mut control = alive.control;
        let mut pings = 0;
        while let Some(Ok(m)) = control.next().await {
            if m.is_ping() {
                pings += 1;
                if pings == 4 {
                    break;
                }
            }
        }
        (pings, control)
    });
    // The raw client answers nothing: the relay pings it twice, then drops it.
    let url = relay.url("localhost", "/$hc/sample?sb-hc-action=listen");
    let mut silent = relay.raw_upgrade(&url, &[("ServiceBusAuthorization", &relay.listen_token("sample"))]).await.unwrap();
    assert_eq!(silent.status, 101);
    let mut pings = 0;
    while let Ok(Some(frame)) = silent.client.recv().await {
        assert_eq!(frame.opcode, hc_protocol::frame::OpCode::Ping);
        pings += 1;
    }
    assert_eq!(pings, 2, "two unanswered pings, then the connection is dropped");
    let (answered, _control) = watcher.await.unwrap();
    assert_eq!(answered, 4);
    assert_eq!(relay.emulator.relay.listener_count("default", "sample"), 1, "the answering listener is still there");
}
