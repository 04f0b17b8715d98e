//! Defects a hostile or careless peer could reach (issue 10), each with the test that failed
//! before its fix: multibyte query names, one hybrid connection's listener touching another's
//! pending connects and requests, a listener that stops reading, a token expiring near 2^64,
//! informational and malformed statuses from a listener, an early refusal before a large
//! body, and header names reaching the listener in the sender's spelling.

use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use hc_protocol::control::{RequestCommand, ServiceCommand};
use hc_protocol::{SasToken, control};
use integration_tests::{TestListener, TestRelay, next_data};
use relay_server::RelayOptions;
use tokio_tungstenite::tungstenite::Message;

/// Two hybrid connections that take anonymous senders.
const TWO: &str = r#"{"namespaces":[{"name":"default","default":true,"hybridConnections":[
    {"name":"a","requiresClientAuthorization":false},{"name":"b","requiresClientAuthorization":false}]}]}"#;

async fn listen_on(relay: &TestRelay, host: &str, namespace: &str, hc: &str) -> TestListener {
    let token = relay.token(host, hc, namespace, Some(hc), "defaultListener");
    let url = relay.url(host, &format!("/$hc/{hc}?sb-hc-action=listen"));
    TestListener {
        control: relay
            .ws(&url, &[("ServiceBusAuthorization", &token)])
            .await
            .expect("listener connects"),
    }
}

/// Waits until the relay has processed everything `l` sent before: it answers pings in order.
async fn round_trip(l: &mut TestListener) {
    l.control
        .send(Message::Ping(b"sync".to_vec().into()))
        .await
        .unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), l.control.next())
            .await
            .expect("pong within 10 s")
        {
            Some(Ok(Message::Pong(p))) if &p[..] == b"sync" => return,
            Some(Ok(_)) => continue,
            other => panic!("control channel ended: {other:?}"),
        }
    }
}

fn response_json(id: &str, status: &str, reason: &str) -> String {
    format!(
        r#"{{"response":{{"requestId":"{id}","statusCode":{status},"statusDescription":"{reason}","body":false}}}}"#
    )
}

fn full_request(command: ServiceCommand) -> RequestCommand {
    match command {
        ServiceCommand::Request(r) => r,
        other => panic!("expected a request, got {other:?}"),
    }
}

#[tokio::test]
async fn multibyte_characters_in_query_names_get_an_answer() {
    let relay = TestRelay::start(TWO, false, RelayOptions::default()).await;
    for query in ["sb-hc\u{e9}=1", "sb-h\u{20ac}=1", "x=1&SB-HC-\u{1F600}=2"] {
        let answer = relay
            .raw_upgrade(&relay.url("localhost", &format!("/$hc/a?{query}")), &[])
            .await
            .unwrap_or_else(|e| panic!("{query}: no answer: {e}"));
        assert_eq!(answer.status, 404, "{query}: {}", answer.reason);
        assert!(
            answer
                .reason
                .starts_with("There are no listeners connected"),
            "{}",
            answer.reason
        );
        let get =
            format!("GET /a/x?{query} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        let answer = relay
            .http_raw(get.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("{query}: no answer: {e}"));
        assert_eq!(answer.status, 404, "{query}: {}", answer.reason);
    }
}

#[tokio::test]
async fn a_listener_cannot_answer_another_hybrid_connections_request() {
    let relay = TestRelay::start(TWO, false, RelayOptions::default()).await;
    let (mut la, mut lb) = (
        listen_on(&relay, "localhost", "default", "a").await,
        listen_on(&relay, "localhost", "default", "b").await,
    );
    let request =
        b"GET /a/x?sb-hc-id=victim HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let (answer, ()) = tokio::join!(relay.http_raw(request), async {
        let r = full_request(la.next_command().await.unwrap());
        assert_eq!(r.id.as_deref(), Some("victim_G0"));
        // b's listener knows the id and answers first; the relay must not take it.
        lb.send_text(&response_json("victim_G0", "200", "Hijacked"))
            .await
            .unwrap();
        round_trip(&mut lb).await;
        la.send_text(&response_json("victim_G0", "201", "Genuine"))
            .await
            .unwrap();
    });
    let answer = answer.unwrap();
    assert_eq!((answer.status, answer.reason.as_str()), (201, "Genuine"));
}

#[tokio::test]
async fn another_hybrid_connection_cannot_take_a_pending_connect() {
    let relay = TestRelay::start(TWO, false, RelayOptions::default()).await;
    let mut la = listen_on(&relay, "localhost", "default", "a").await;
    let sender = relay.raw_upgrade(&relay.url("localhost", "/$hc/a?sb-hc-id=victim"), &[]);
    let (sender, joined) = tokio::join!(sender, async {
        let accept = la.next_accept().await.unwrap();
        let stolen = relay.url("localhost", "/$hc/b?sb-hc-action=accept&sb-hc-id=victim_G0");
        let attack = relay.raw_upgrade(&stolen, &[]).await.unwrap();
        assert_eq!(attack.status, 403, "{}", attack.reason);
        let rejecting = relay
            .raw_upgrade(&format!("{stolen}&sb-hc-statusCode=500"), &[])
            .await
            .unwrap();
        assert_eq!(
            rejecting.status, 403,
            "nor can it reject another's connect: {}",
            rejecting.reason
        );
        la.join(&relay, &accept, None).await
    });
    let (sender, mut listener_side) = (sender.unwrap(), joined);
    assert_eq!(sender.status, 101, "{}", sender.reason);
    let mut sender = sender.client;
    sender
        .send(true, hc_protocol::frame::OpCode::Text, b"still mine")
        .await
        .unwrap();
    assert_eq!(
        next_data(&mut listener_side).await.unwrap(),
        Message::text("still mine")
    );
}

#[tokio::test]
async fn another_hybrid_connection_cannot_take_a_pending_request_rendezvous() {
    let relay = TestRelay::start(TWO, false, RelayOptions::default()).await;
    let mut la = listen_on(&relay, "localhost", "default", "a").await;
    let body = vec![b'x'; 100 * 1024];
    let mut request =
        format!("POST /a/x?sb-hc-id=victim2 HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())
            .into_bytes();
    request.extend_from_slice(&body);
    let (answer, ()) = tokio::join!(relay.http_raw(&request), async {
        let r = full_request(la.next_command().await.unwrap());
        assert!(r.method.is_none(), "a large body goes by rendezvous: {r:?}");
        let attack = relay
            .raw_upgrade(
                &relay.url(
                    "localhost",
                    "/$hc/b?sb-hc-action=request&sb-hc-id=victim2_G0",
                ),
                &[],
            )
            .await
            .unwrap();
        assert_eq!(attack.status, 403, "{}", attack.reason);
        let mut rv = relay
            .ws(&r.address, &[])
            .await
            .expect("the genuine listener joins");
        let head = full_request(
            match next_data(&mut rv).await.unwrap() {
                Message::Text(t) => ServiceCommand::parse(&t).map(|c| match c {
                    control::Incoming::Known(c) => c,
                    other => panic!("{other:?}"),
                }),
                other => panic!("{other:?}"),
            }
            .unwrap(),
        );
        assert_eq!(head.method.as_deref(), Some("POST"));
        assert_eq!(
            next_data(&mut rv).await.unwrap(),
            Message::binary(vec![b'x'; 100 * 1024])
        );
        rv.send(Message::text(response_json("victim2_G0", "202", "Genuine")))
            .await
            .unwrap();
        let _ = rv.next().await;
    });
    let answer = answer.unwrap();
    assert_eq!((answer.status, answer.reason.as_str()), (202, "Genuine"));
}

#[tokio::test]
async fn an_id_reused_in_another_namespace_is_independent() {
    let config = r#"{"namespaces":[
        {"name":"default","default":true,"hybridConnections":[{"name":"sample","requiresClientAuthorization":false}]},
        {"name":"contoso","hybridConnections":[{"name":"sample","requiresClientAuthorization":false}]}]}"#;
    let relay = TestRelay::start(config, false, RelayOptions::default()).await;
    let mut l1 = listen_on(&relay, "localhost", "default", "sample").await;
    let mut l2 = listen_on(&relay, "contoso.localhost", "contoso", "sample").await;
    let url2 = relay.url("contoso.localhost", "/$hc/sample?sb-hc-id=dup");
    let s1 = relay.ws(&relay.url("localhost", "/$hc/sample?sb-hc-id=dup"), &[]);
    let (s1, (mut j1, s2, mut j2)) = tokio::join!(s1, async {
        // The second sender connects while the first one's rendezvous is pending.
        let accept1 = l1.next_accept().await.unwrap();
        let (s2, j2) = tokio::join!(relay.ws(&url2, &[]), async {
            let accept2 = l2.next_accept().await.unwrap();
            l2.join(&relay, &accept2, None).await
        });
        let j1 = l1.join(&relay, &accept1, None).await;
        (j1, s2, j2)
    });
    let (mut s1, mut s2) = (
        s1.expect("first sender connects"),
        s2.expect("second sender, same id, other namespace, connects"),
    );
    s1.send(Message::text("one")).await.unwrap();
    s2.send(Message::text("two")).await.unwrap();
    assert_eq!(next_data(&mut j1).await.unwrap(), Message::text("one"));
    assert_eq!(next_data(&mut j2).await.unwrap(), Message::text("two"));
}

/// A correctly signed token may say it expires in the year 584 billion; the channel works.
#[tokio::test]
async fn a_token_expiring_near_2_pow_64_is_served() {
    let relay = TestRelay::start("{}", false, RelayOptions::default()).await;
    let key = relay.key("default", Some("sample"), "defaultListener");
    for se in [u64::MAX, u64::MAX - 31, 1u64 << 63] {
        let token =
            SasToken::create("http://localhost/sample/", "defaultListener", &key, se).expose();
        let url = relay.url("localhost", "/$hc/sample?sb-hc-action=listen");
        let mut l = TestListener {
            control: relay
                .ws(&url, &[("ServiceBusAuthorization", &token)])
                .await
                .expect("listener connects"),
        };
        let sender = relay.ws(
            &relay.url("localhost", "/$hc/sample"),
            &[("ServiceBusAuthorization", &relay.send_token("sample"))],
        );
        let (sender, joined) = tokio::join!(sender, async {
            let accept = l
                .next_accept()
                .await
                .expect("the channel is alive and gets the accept");
            l.join(&relay, &accept, None).await
        });
        let (mut sender, mut joined) = (sender.unwrap(), joined);
        sender.send(Message::text("far future")).await.unwrap();
        assert_eq!(
            next_data(&mut joined).await.unwrap(),
            Message::text("far future")
        );
        l.control.close(None).await.unwrap();
        while l.control.next().await.is_some() {}
    }
}

/// `101`, `100`, `600` and a status that is no number are answered with 502 at once.
#[tokio::test]
async fn informational_and_malformed_statuses_get_502_at_once() {
    let options = RelayOptions {
        http_response_timeout: Duration::from_secs(30),
        ..RelayOptions::default()
    };
    let relay = TestRelay::start(TWO, false, options).await;
    let mut l = listen_on(&relay, "localhost", "default", "a").await;
    for (i, status) in ["101", "100", "600", r#""abc""#, "null"]
        .into_iter()
        .enumerate()
    {
        let request =
            format!("GET /a/{i} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        let started = Instant::now();
        let (answer, ()) = tokio::join!(relay.http_raw(request.as_bytes()), async {
            let r = full_request(l.next_command().await.unwrap());
            l.send_text(&response_json(r.id.as_deref().unwrap(), status, "Odd"))
                .await
                .unwrap();
        });
        let answer = answer.unwrap();
        assert_eq!(
            answer.status, 502,
            "listener status {status}: {} {}",
            answer.status, answer.reason
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "status {status} answered at once"
        );
    }
    round_trip(&mut l).await;
}

/// An early refusal (401 here) reads what the client is sending first, so a client that
/// writes its whole body before reading sees the 401, not a broken pipe. The client paces its
/// upload like one on a slower link, so the relay has answered before the body is through.
#[tokio::test]
async fn an_early_refusal_reads_the_body_first() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let relay = TestRelay::default_tls().await;
    for size in [65 * 1024, 900 * 1024] {
        let mut stream = relay.stream("localhost").await.unwrap();
        let head = format!(
            "POST /sample/upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.flush().await.unwrap();
        let body = vec![b'z'; size];
        for (i, chunk) in body.chunks(16 * 1024).enumerate() {
            let written = async {
                stream.write_all(chunk).await?;
                stream.flush().await
            };
            written
                .await
                .unwrap_or_else(|e| panic!("{size} bytes: writing piece {i} failed: {e}"));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut all = Vec::new();
        stream
            .read_to_end(&mut all)
            .await
            .unwrap_or_else(|e| panic!("{size} bytes: reading the answer failed: {e}"));
        let answer = integration_tests::raw::parse_answer(&all).unwrap();
        assert_eq!(answer.status, 401, "{size}: {}", answer.reason);
        assert!(String::from_utf8_lossy(&answer.body).contains("TokenMissingOrInvalid"));
    }
}

/// Header names reach the listener as the sender spelled them, in HTTP mode and in
/// `connectHeaders`.
#[tokio::test]
async fn header_names_keep_the_senders_spelling() {
    let relay = TestRelay::start(TWO, true, RelayOptions::default()).await;
    let mut l = listen_on(&relay, "localhost", "default", "a").await;
    let request = b"GET /a/case HTTP/1.1\r\nHost: localhost\r\nx-MyHeader: one\r\nX-ALL-CAPS: two\r\ncontent-TYPE: text/plain\r\nConnection: close\r\n\r\n";
    let (answer, ()) = tokio::join!(relay.http_raw(request), async {
        let r = full_request(l.next_command().await.unwrap());
        let names: Vec<String> = r
            .request_headers
            .unwrap()
            .0
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        for expected in ["Host", "x-MyHeader", "X-ALL-CAPS", "content-TYPE"] {
            assert!(
                names.iter().any(|n| n == expected),
                "{expected} in {names:?}"
            );
        }
        l.send_text(&response_json(r.id.as_deref().unwrap(), "200", "OK"))
            .await
            .unwrap();
    });
    assert_eq!(answer.unwrap().status, 200);
    let sender = relay.raw_upgrade(
        &relay.url("localhost", "/$hc/a"),
        &[("x-CustomCase", "v"), ("X-SHOUT", "w")],
    );
    let (sender, ()) = tokio::join!(sender, async {
        let accept = l.next_accept().await.unwrap();
        let names: Vec<&str> = accept
            .connect_headers
            .0
            .iter()
            .map(|(k, _)| k.as_str())
            .collect();
        for expected in ["x-CustomCase", "X-SHOUT", "Sec-WebSocket-Key", "Upgrade"] {
            assert!(names.contains(&expected), "{expected} in {names:?}");
        }
        let _ = relay
            .raw_upgrade(&format!("{}&sb-hc-statusCode=409", accept.address), &[])
            .await
            .unwrap();
    });
    assert_eq!(sender.unwrap().status, 409);
}
