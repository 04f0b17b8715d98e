//! HTTP request mode (PROTOCOL.md §8) with Microsoft's hyco-https listener and our own
//! (hc-client) serving through our relay to curl and to a Rust HTTP client (hyper): empty,
//! 1 KiB, 1 MiB and chunked bodies, the reason phrase, `Via`, header handling, a response over
//! 64 KiB, connection reuse, the response deadline, no listener, and auth failures. Tests
//! that need node/npm or curl are ignored by default (`--include-ignored` runs them; CI does).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use integration_tests::TestRelay;
use integration_tests::node::Peer;
use relay_server::RelayOptions;
use serde_json::Value;
use sha2::{Digest, Sha256};

struct Setup {
    relay: TestRelay,
    ca: PathBuf,
    dir: tempfile::TempDir,
    listener: Option<Peer>,
}

async fn setup(options: RelayOptions, with_listener: bool) -> Setup {
    let relay = TestRelay::start("{}", true, options).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, relay.emulator.ca_pem.as_ref().unwrap()).unwrap();
    let listener = if with_listener {
        let key = relay.key("default", Some("sample"), "defaultListener");
        let url = relay.url("localhost", "/$hc/sample?sb-hc-action=listen");
        let mut peer = Peer::start(
            "node-https",
            &[&url],
            &ca,
            ("defaultListener", key.expose()),
            &[],
        );
        peer.until("listening").await;
        Some(peer)
    } else {
        None
    };
    Setup {
        relay,
        ca,
        dir,
        listener,
    }
}

impl Setup {
    fn url(&self, path_and_query: &str) -> String {
        format!("https://localhost:{}{path_and_query}", self.relay.port())
    }

    /// The listener's record of the next request.
    async fn seen(&mut self) -> Value {
        self.listener
            .as_mut()
            .unwrap()
            .until("request")
            .await
            .pop()
            .unwrap()
    }
}

/// An answer: status, reason, headers (lower-cased), body.
struct Answer {
    status: u16,
    reason: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

async fn curl(ca: &Path, dir: &Path, args: Vec<String>) -> Answer {
    let (head, body) = (
        dir.join(format!("h{}", rand::random::<u32>())),
        dir.join(format!("b{}", rand::random::<u32>())),
    );
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "30", "--cacert"])
        .arg(ca)
        .arg("-D")
        .arg(&head)
        .arg("-o")
        .arg(&body)
        .args(&args);
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("curl"))
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let head = std::fs::read_to_string(head).unwrap();
    let last = head
        .split("\r\n\r\n")
        .filter(|b| !b.trim().is_empty())
        .last()
        .unwrap()
        .to_owned();
    let mut lines = last.lines();
    let status_line = lines.next().unwrap();
    let mut parts = status_line.splitn(3, ' ');
    parts.next();
    let status = parts.next().unwrap().parse().unwrap();
    let reason = parts.next().unwrap_or_default().trim().to_owned();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Answer {
        status,
        reason,
        headers,
        body: std::fs::read(body).unwrap(),
    }
}

/// One request over a new TLS connection to the relay (`hc_client`'s request helper).
async fn fetch(
    s: &Setup,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Answer {
    let stream = s.relay.stream("localhost").await.unwrap();
    let (head, body) = hc_client::handshake::http_request(
        stream,
        method.parse().unwrap(),
        path,
        &format!("localhost:{}", s.relay.port()),
        headers,
        body,
    )
    .await
    .unwrap();
    Answer {
        status: head.status,
        reason: head.reason,
        headers: head.headers,
        body,
    }
}

fn sha(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs node, npm and curl; --include-ignored runs it"]
async fn curl_through_hyco_https_with_every_body_size() {
    let mut s = setup(RelayOptions::default(), true).await;
    let token = s.relay.send_token("sample");
    let auth = format!("ServiceBusAuthorization: {token}");
    // GET, no body; the query without sb-hc-* pairs and the hybrid connection name reach the listener.
    let a = curl(
        &s.ca,
        s.dir.path(),
        vec![
            "-H".into(),
            auth.clone(),
            s.url("/sample/echo?status=201&reason=Made%20It&x=1&sb-hc-token=zzz"),
        ],
    )
    .await;
    assert_eq!(
        (a.status, a.reason.as_str(), a.body.len()),
        (201, "Made It", 0)
    );
    assert_eq!(a.header("via"), Some("1.1 localhost"));
    assert_eq!(a.header("x-method"), Some("GET"));
    let r = s.seen().await;
    assert_eq!(r["url"], "/sample/echo?status=201&reason=Made%20It&x=1");
    assert!(r["headers"].get("servicebusauthorization").is_none());
    // POSTs: 1 KiB (control channel, with Expect: 100-continue), 1 MiB (rendezvous), chunked.
    for (size, extra) in [
        (1024usize, vec!["-H", "Expect: 100-continue"]),
        (1024 * 1024, vec![]),
        (300 * 1024, vec!["-H", "Transfer-Encoding: chunked"]),
    ] {
        let data: Vec<u8> = (0..size).map(|i| (i * 13 % 251) as u8).collect();
        let file = s.dir.path().join(format!("body{size}"));
        std::fs::write(&file, &data).unwrap();
        let mut args: Vec<String> = vec![
            "-H".into(),
            auth.clone(),
            "--data-binary".into(),
            format!("@{}", file.display()),
        ];
        args.extend(extra.iter().map(|x| x.to_string()));
        args.push(s.url("/sample/echo"));
        let a = curl(&s.ca, s.dir.path(), args).await;
        assert_eq!(a.status, 200, "{size}");
        assert_eq!(
            (a.header("x-length"), a.header("x-sha256")),
            (Some(size.to_string().as_str()), Some(sha(&data).as_str())),
            "{size}"
        );
        assert!(a.body == data, "{size}: the echoed body");
        let r = s.seen().await;
        assert_eq!(
            (r["method"].as_str(), r["length"].as_u64()),
            (Some("POST"), Some(size as u64))
        );
        assert!(
            r["headers"].get("expect").is_none() && r["headers"].get("transfer-encoding").is_none()
        );
    }
    // A response over 64 KiB to a small request comes back on a rendezvous the listener opens.
    let a = curl(
        &s.ca,
        s.dir.path(),
        vec!["-H".into(), auth.clone(), s.url("/sample/big?n=1048576")],
    )
    .await;
    assert_eq!((a.status, a.body.len()), (200, 1024 * 1024));
    assert!(a.body.iter().all(|b| *b == 7));
    assert_eq!(s.seen().await["url"], "/sample/big?n=1048576");
    // Repeated request headers are joined; Authorization passes when the token came elsewhere.
    curl(
        &s.ca,
        s.dir.path(),
        vec![
            "-H".into(),
            auth,
            "-H".into(),
            "X-Multi: a".into(),
            "-H".into(),
            "X-Multi: b".into(),
            "-H".into(),
            "Authorization: Bearer app".into(),
            s.url("/sample/echo"),
        ],
    )
    .await;
    let r = s.seen().await;
    assert_eq!(
        (
            r["headers"]["x-multi"].as_str(),
            r["headers"]["authorization"].as_str()
        ),
        (Some("a, b"), Some("Bearer app")),
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs node and npm; --include-ignored runs it"]
async fn a_rust_client_reuses_its_connection() {
    let mut s = setup(RelayOptions::default(), true).await;
    let token = s.relay.send_token("sample");
    let stream = s.relay.stream("localhost").await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let host = format!("localhost:{}", s.relay.port());
    let big: Vec<u8> = (0..1024 * 1024).map(|i| (i % 97) as u8).collect();
    for (method, body) in [
        ("POST", big.clone()),
        ("GET", Vec::new()),
        ("POST", b"small".to_vec()),
        ("POST", big),
    ] {
        let req = hyper::Request::builder()
            .method(method)
            .uri("/sample/echo?status=202&reason=Taken")
            .header("host", &host)
            .header("ServiceBusAuthorization", &token)
            .body(Full::new(Bytes::from(body.clone())))
            .unwrap();
        sender.ready().await.unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status().as_u16(), 202, "{method} {}", body.len());
        assert_eq!(
            resp.extensions()
                .get::<hyper::ext::ReasonPhrase>()
                .map(|r| r.as_bytes().to_vec()),
            Some(b"Taken".to_vec())
        );
        let got = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(got == body, "{method} {}: echoed", body.len());
        assert_eq!(s.seen().await["length"].as_u64(), Some(body.len() as u64));
    }
}

fn error_json(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(body)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_listener_gets_the_configured_status() {
    for (status, options) in [
        (404, RelayOptions::default()),
        (
            502,
            RelayOptions {
                http_no_listener_status: 502,
                ..Default::default()
            },
        ),
    ] {
        let s = setup(options, false).await;
        let token = s.relay.send_token("sample");
        let auth = [("ServiceBusAuthorization", token.as_str())];
        let a = fetch(&s, "GET", "/sample/anything", &auth, Vec::new()).await;
        assert_eq!(a.status, status);
        assert!(
            error_json(&a.body)["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("There are no listeners connected for the endpoint.")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_failures_are_401_with_an_error_body() {
    let s = setup(RelayOptions::default(), false).await;
    let wrong = hc_protocol::SasToken::create(
        "http://localhost/sample/",
        "defaultSender",
        &hc_protocol::SasKey::new("bm9wZQ==").unwrap(),
        relay_server::now_unix() + 60,
    )
    .expose();
    let listen_only = s.relay.listen_token("sample");
    for (headers, status, starts) in [
        (vec![], 401, "MissingToken:"),
        (
            vec![("ServiceBusAuthorization", wrong.as_str())],
            401,
            "InvalidSignature:",
        ),
        (
            vec![("Authorization", wrong.as_str())],
            401,
            "InvalidSignature:",
        ),
        (
            vec![("ServiceBusAuthorization", listen_only.as_str())],
            403,
            "Unauthorized access. 'Send' claim(s) are required",
        ),
    ] {
        let a = fetch(&s, "GET", "/sample/echo", &headers, Vec::new()).await;
        assert_eq!(a.status, status, "{starts}");
        let e = error_json(&a.body);
        assert_eq!(
            e["error"]["code"],
            if status == 401 {
                "TokenMissingOrInvalid"
            } else {
                "Forbidden"
            }
        );
        assert!(
            e["error"]["message"].as_str().unwrap().starts_with(starts),
            "{e}"
        );
    }
}

/// Our listener (hc-client): echoes with "From Rust", or 1 MiB of 9s for `/big`.
fn our_handler(req: hc_client::http::HttpRequest) -> hc_client::http::HttpResponse {
    let mut headers = hc_protocol::control::Headers::default();
    headers.append("X-Target", &req.target);
    let body = if req.target.contains("/big") {
        vec![9u8; 1024 * 1024]
    } else {
        req.body
    };
    hc_client::http::HttpResponse {
        status: 200,
        reason: Some("From Rust".into()),
        headers,
        body,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_crate_serves_http_requests() {
    use hc_client::listener::{ControlChannel, ControlEvent, ListenerConfig};
    let s = setup(RelayOptions::default(), false).await;
    let tls = hc_client::tls::client_config(Some(&s.ca)).unwrap();
    let endpoint = hc_client::RelayEndpoint::from_endpoint(
        &format!("sb://{}/", s.relay.emulator.authority()),
        tls,
    )
    .unwrap();
    let cs = s
        .relay
        .emulator
        .relay
        .connection_string(
            "default",
            Some("sample"),
            "defaultListener",
            &s.relay.emulator.authority(),
        )
        .unwrap();
    let tokens =
        hc_client::token::TokenProvider::from_connection_string(&cs, Duration::from_secs(3600));
    let config = ListenerConfig {
        endpoint: endpoint.clone(),
        path: "sample".into(),
        tokens,
        tracking_id: "our-http-listener".into(),
    };
    let mut channel = ControlChannel::open(&config).await.unwrap();
    tokio::spawn(async move {
        loop {
            match channel.next_event().await {
                Ok(ControlEvent::Request(command)) if command.is_full() => {
                    let request = channel.read_request(command).await.unwrap();
                    let response = our_handler(request.clone());
                    channel
                        .respond(&endpoint, &request, &response)
                        .await
                        .unwrap();
                }
                Ok(ControlEvent::Request(command)) => {
                    let endpoint = endpoint.clone();
                    tokio::spawn(async move {
                        hc_client::http::serve_rendezvous(&endpoint, &command.address, our_handler)
                            .await
                    });
                }
                Ok(ControlEvent::Ping) => channel.flush_control().await.unwrap(),
                Ok(ControlEvent::Closed { .. }) | Err(_) => return,
                Ok(_) => {}
            }
        }
    });
    let token = s.relay.send_token("sample");
    let auth = [("ServiceBusAuthorization", token.as_str())];
    let a = fetch(&s, "GET", "/sample/x?y=1", &auth, Vec::new()).await;
    assert_eq!(
        (a.status, a.reason.as_str(), a.header("x-target")),
        (200, "From Rust", Some("/sample/x?y=1"))
    );
    let data: Vec<u8> = (0..1024 * 1024).map(|i| (i % 89) as u8).collect();
    let a = fetch(&s, "POST", "/sample/echo", &auth, data.clone()).await;
    assert!(
        a.status == 200 && a.body == data,
        "1 MiB request by rendezvous, echoed"
    );
    let a = fetch(&s, "GET", "/sample/big", &auth, Vec::new()).await;
    assert!(
        a.status == 200 && a.body.len() == 1024 * 1024 && a.body.iter().all(|b| *b == 9),
        "1 MiB response by rendezvous"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_survives_a_listener_that_closes_its_rendezvous() {
    use hc_client::listener::{ControlChannel, ControlEvent, ListenerConfig};
    let s = setup(RelayOptions::default(), false).await;
    let tls = hc_client::tls::client_config(Some(&s.ca)).unwrap();
    let endpoint = hc_client::RelayEndpoint::from_endpoint(
        &format!("sb://{}/", s.relay.emulator.authority()),
        tls,
    )
    .unwrap();
    let cs = s
        .relay
        .emulator
        .relay
        .connection_string(
            "default",
            Some("sample"),
            "defaultListener",
            &s.relay.emulator.authority(),
        )
        .unwrap();
    let tokens =
        hc_client::token::TokenProvider::from_connection_string(&cs, Duration::from_secs(3600));
    let config = ListenerConfig {
        endpoint: endpoint.clone(),
        path: "sample".into(),
        tokens,
        tracking_id: "closing-listener".into(),
    };
    let mut channel = ControlChannel::open(&config).await.unwrap();
    // Like the .NET listener: a large response goes through a rendezvous that is closed after it.
    tokio::spawn(async move {
        while let Ok(event) = channel.next_event().await {
            if let ControlEvent::Request(command) = event
                && command.is_full()
            {
                let request = channel.read_request(command).await.unwrap();
                channel
                    .respond(&endpoint, &request, &our_handler(request.clone()))
                    .await
                    .unwrap();
            }
        }
    });
    let stream = s.relay.stream("localhost").await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let host = format!("localhost:{}", s.relay.port());
    let token = s.relay.send_token("sample");
    for (path, size) in [
        ("/sample/big", 1024 * 1024),
        ("/sample/after", 0),
        ("/sample/big", 1024 * 1024),
        ("/sample/again", 0),
    ] {
        sender.ready().await.unwrap();
        let req = hyper::Request::builder()
            .uri(path)
            .header("host", &host)
            .header("ServiceBusAuthorization", &token)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{path}");
        assert_eq!(
            resp.into_body().collect().await.unwrap().to_bytes().len(),
            size,
            "{path}"
        );
    }
}
