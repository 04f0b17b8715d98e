//! Several namespaces on one port, chosen by Host (§2.1), and the runtime-info GET (§10).

use futures_util::SinkExt as _;
use hc_protocol::SasToken;
use hc_protocol::runtime_info::RuntimeInfo;
use integration_tests::{TestListener, TestRelay, next_data};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

const TWO_NAMESPACES: &str = r#"{"namespaces":[
  {"name":"default","default":true,"hybridConnections":[{"name":"sample"}]},
  {"name":"contoso","aliases":["contoso.servicebus.windows.net"],
   "hybridConnections":[{"name":"db","endpoint":"localhost:5432"},{"name":"team/api"}]}
]}"#;

fn contoso_token(relay: &TestRelay, host: &str, hc: &str, rule: &str) -> String {
    let key = relay.key("contoso", Some(hc), rule);
    SasToken::create(
        &format!("http://{host}/{hc}/"),
        rule,
        &key,
        relay_server::now_unix() + 600,
    )
    .expose()
}

#[tokio::test]
async fn namespaces_are_chosen_by_host_and_alias() {
    let relay = TestRelay::start(TWO_NAMESPACES, true, Default::default()).await;
    let listen_url = relay.url("contoso.localhost", "/$hc/db?sb-hc-action=listen");
    let control = relay
        .ws(
            &listen_url,
            &[(
                "ServiceBusAuthorization",
                &contoso_token(&relay, "contoso.localhost", "db", "defaultListener"),
            )],
        )
        .await
        .unwrap();
    let mut listener = TestListener { control };
    // The sender uses the alias; the token names the alias host too.
    let url = relay.url("contoso.servicebus.windows.net", "/$hc/db");
    let token = contoso_token(
        &relay,
        "contoso.servicebus.windows.net",
        "db",
        "defaultSender",
    );
    let (s, l) = tokio::join!(
        relay.ws(&url, &[("ServiceBusAuthorization", &token)]),
        async {
            let a = listener.next_accept().await.unwrap();
            assert!(
                a.address
                    .starts_with(&format!("wss://contoso.localhost:{}/$hc/db?", relay.port())),
                "{}",
                a.address
            );
            listener.join(&relay, &a, None).await
        }
    );
    let (mut s, mut l) = (s.unwrap(), l);
    s.send(Message::text("to contoso")).await.unwrap();
    assert_eq!(
        next_data(&mut l).await.unwrap(),
        Message::text("to contoso")
    );
    // The default namespace has no 'db'.
    let r = relay
        .raw_upgrade(&relay.url("localhost", "/$hc/db?sb-hc-action=listen"), &[])
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    // A token for the default namespace is no good in contoso.
    let wrong = relay.token(
        "localhost",
        "db",
        "default",
        None,
        "RootManageSharedAccessKey",
    );
    let r = relay
        .raw_upgrade(
            &relay.url("contoso.localhost", "/$hc/db?sb-hc-action=listen"),
            &[("ServiceBusAuthorization", &wrong)],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn longest_registered_prefix_owns_the_path() {
    let relay = TestRelay::start(TWO_NAMESPACES, true, Default::default()).await;
    let token = contoso_token(&relay, "contoso.localhost", "team/api", "defaultListener");
    let control = relay
        .ws(
            &relay.url("contoso.localhost", "/$hc/team/api?sb-hc-action=listen"),
            &[("ServiceBusAuthorization", &token)],
        )
        .await
        .unwrap();
    let mut listener = TestListener { control };
    let send = contoso_token(&relay, "contoso.localhost", "team/api", "defaultSender");
    let url = relay.url("contoso.localhost", "/$hc/team/api/v1/items?q=1");
    let (s, _) = tokio::join!(
        relay.raw_upgrade(&url, &[("ServiceBusAuthorization", &send)]),
        async {
            let a = listener.next_accept().await.unwrap();
            assert!(
                a.address
                    .contains("/$hc/team/api/v1/items?q=1&sb-hc-action=accept"),
                "{}",
                a.address
            );
            relay
                .raw_upgrade(
                    &format!(
                        "{}&sb-hc-statusCode=418&sb-hc-statusDescription=teapot",
                        a.address
                    ),
                    &[],
                )
                .await
                .unwrap()
        }
    );
    assert_eq!(s.unwrap().status, 418);
}

#[tokio::test]
async fn unknown_hosts_get_404_naming_the_host() {
    let relay = TestRelay::start(TWO_NAMESPACES, false, Default::default()).await;
    let r = relay
        .raw_upgrade(&relay.url("nowhere.example", "/$hc/db"), &[])
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    assert!(
        r.reason
            .starts_with("No namespace is configured for host 'nowhere.example'."),
        "{}",
        r.reason
    );
}

async fn get(
    relay: &TestRelay,
    host: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    let mut stream = relay.stream(host).await.unwrap();
    let mut req = format!(
        "GET {target} HTTP/1.1\r\nHost: {host}:{}\r\nConnection: close\r\n",
        relay.port()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    let _ = stream.read_to_string(&mut out).await;
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    let status = head[9..12].parse().unwrap();
    (status, head.to_owned(), body.to_owned())
}

#[tokio::test]
async fn runtime_info_for_any_right_with_atom_entry() {
    let relay = TestRelay::start(TWO_NAMESPACES, true, Default::default()).await;
    let lt = contoso_token(&relay, "contoso.localhost", "db", "defaultListener");
    let _listener = relay
        .ws(
            &relay.url("contoso.localhost", "/$hc/db?sb-hc-action=listen"),
            &[("ServiceBusAuthorization", &lt)],
        )
        .await
        .unwrap();
    for rule in ["defaultListener", "defaultSender"] {
        let token = contoso_token(&relay, "contoso.localhost", "db", rule);
        let (status, head, body) = get(
            &relay,
            "contoso.localhost",
            "/db?api-version=2016-07",
            &[("X-PROCESS-AT", "ServiceBus"), ("Authorization", &token)],
        )
        .await;
        assert_eq!(status, 200, "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/atom+xml;type=entry;charset=utf-8"),
            "{head}"
        );
        let f = RuntimeInfo::parse_atom(&body).unwrap();
        assert_eq!(
            (
                f.requires_client_authorization,
                f.user_metadata.as_deref(),
                f.listener_count
            ),
            (
                true,
                Some(r#"[{"key":"endpoint","value":"localhost:5432"}]"#),
                1
            )
        );
    }
    let (status, _, body) = get(&relay, "contoso.localhost", "/db?api-version=2016-07", &[]).await;
    assert_eq!(status, 401);
    assert!(
        body.starts_with("<Error><Code>401</Code><Detail>MissingToken:"),
        "{body}"
    );
    let token = contoso_token(&relay, "contoso.localhost", "db", "defaultListener");
    let (status, _, body) = get(
        &relay,
        "contoso.localhost",
        "/nothing?api-version=2016-07",
        &[("ServiceBusAuthorization", &token)],
    )
    .await;
    assert_eq!(status, 404);
    assert!(
        body.starts_with("<Error><Code>404</Code><Detail>Endpoint does not exist."),
        "{body}"
    );
    // Without the management markers it is an HTTP-mode request: relayed, here to no listener.
    let send = contoso_token(&relay, "contoso.localhost", "team/api", "defaultSender");
    let (status, head, body) = get(
        &relay,
        "contoso.localhost",
        "/team/api/x?api-version=abc",
        &[("ServiceBusAuthorization", &send)],
    )
    .await;
    assert_eq!(status, 404, "{head}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("There are no listeners connected for the endpoint."),
        "{body}"
    );
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("SystemTracker:contoso.localhost:team/api/x"),
        "{body}"
    );
}
