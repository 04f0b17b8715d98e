//! Issue 14: what the relay, the HCM and the shim report about themselves, checked against
//! what the test did: health and readiness, and exact counts and byte totals in each
//! `/metrics`, parsed with a Prometheus text-format parser (`prometheus-parse`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::time::Duration;

use hc_emulator::chain::{Chain, ChainBuilder};
use hc_emulator::procs::http_get;
use hc_emulator::servers;
use hc_protocol::{ConnectionString, Credential, SasToken};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Samples of one scrape: (name, sorted labels) -> value.
struct Scrape(HashMap<(String, Vec<(String, String)>), f64>, String);

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text format");
        let mut samples = HashMap::new();
        for s in scrape.samples {
            let mut labels: Vec<(String, String)> = s
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            labels.sort();
            let value = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                prometheus_parse::Value::Histogram(h) => {
                    h.iter().map(|b| b.count).fold(0.0, f64::max)
                }
                prometheus_parse::Value::Summary(_) => f64::NAN,
            };
            samples.insert((s.metric, labels), value);
        }
        Scrape(samples, text.to_owned())
    }

    /// The value of `name` with exactly `labels`, 0 when absent.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut key: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        key.sort();
        self.0.get(&(name.to_owned(), key)).copied().unwrap_or(0.0)
    }

    fn has(&self, name: &str) -> bool {
        self.0.keys().any(|(n, _)| n == name)
    }
}

const NS: (&str, &str) = ("namespace", "default");
const HC: (&str, &str) = ("hybrid_connection", "chain");

async fn echo_through(c: &Chain, bytes: usize) -> Vec<u8> {
    let mut s = TcpStream::connect(c.forward).await.unwrap();
    let data: Vec<u8> = (0..bytes).map(|i| (i % 251) as u8).collect();
    s.write_all(&data).await.unwrap();
    s.shutdown().await.unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, data, "{}", c.logs());
    back
}

/// A raw HTTP/1.1 request to the plain relay; the status.
fn http_mode(c: &Chain, path: &str, token: Option<&str>) -> u16 {
    request(c, path, token, "Connection: close\r\n")
}

/// A WebSocket upgrade to the plain relay; the status.
fn upgrade(c: &Chain, path: &str) -> u16 {
    request(
        c,
        path,
        None,
        "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
    )
}

fn request(c: &Chain, path: &str, token: Option<&str>, extra: &str) -> u16 {
    let mut tcp = std::net::TcpStream::connect(c.relay_addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let auth = token
        .map(|t| format!("ServiceBusAuthorization: {t}\r\n"))
        .unwrap_or_default();
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}{extra}\r\n"
    )
    .unwrap();
    // The status line is all this needs; the connection may stay open after it.
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\r\n") && tcp.read(&mut byte).unwrap_or(0) == 1 {
        answer.push(byte[0]);
    }
    let answer = String::from_utf8_lossy(&answer).into_owned();
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no answer: {answer:?}"))
}

fn send_token(c: &Chain) -> String {
    let cs = ConnectionString::parse(&c.send_cs).unwrap();
    let Some(Credential::Key { name, key }) = &cs.credential else {
        panic!("the chain's Send string has a key")
    };
    let uri = format!("http://localhost:{}/chain", c.relay_port);
    SasToken::create(&uri, name, key, relay_server::now_unix() + 600).expose()
}

/// Scrapes `which` until `done` holds (the far ends of a tunnel count its end a moment after
/// the client saw it), 10 s at most.
async fn settled(c: &Chain, which: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let mut last = None;
    for _ in 0..500 {
        let scrape = Scrape::parse(&c.metrics(which).unwrap());
        if done(&scrape) {
            return scrape;
        }
        last = Some(scrape);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "{which} metrics did not settle:\n{}\n{}",
        last.map(|s| s.1).unwrap_or_default(),
        c.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metrics_endpoint_counts_what_was_done() {
    let echo = servers::echo_server().await;
    let c = ChainBuilder::new(echo.to_string())
        .plain(true)
        .relay_args(["--log-format", "json"])
        .start()
        .await
        .unwrap();
    for (addr, ca) in [
        (c.relay_addr, None),
        (c.hcm_metrics, None),
        (c.shim_metrics, None),
    ] {
        assert_eq!(http_get(addr, "/healthz", ca).unwrap().0, 200);
        assert_eq!(
            http_get(addr, "/readyz", ca).unwrap(),
            (200, "ready\n".into())
        );
    }
    // Two tunnels of known sizes, both closed by the client's half-close and the echo.
    echo_through(&c, 1000).await;
    echo_through(&c, 5000).await;
    // HTTP request mode: refused for want of a token (the relay answers), then with one (the
    // HCM answers 501 on its control channel, as a listener without a request handler).
    assert_eq!(http_mode(&c, "/chain", None), 401);
    assert_eq!(http_mode(&c, "/chain", Some(&send_token(&c))), 501);
    // A sender for a hybrid connection that does not exist.
    assert_eq!(upgrade(&c, "/$hc/nothing-here?sb-hc-action=connect"), 404);

    let relay = settled(&c, "relay", |s| {
        s.get(
            "relay_tunnels_closed_total",
            &[NS, HC, ("outcome", "closed")],
        ) == 2.0
    })
    .await;
    let r = |name: &str, labels: &[(&str, &str)]| relay.get(name, labels);
    assert_eq!(r("relay_listeners", &[NS, HC]), 1.0, "{}", relay.1);
    assert_eq!(
        r(
            "relay_listen_attempts_total",
            &[NS, HC, ("outcome", "accepted")]
        ),
        1.0
    );
    assert_eq!(
        r(
            "relay_tunnels_total",
            &[NS, HC, ("outcome", "accepted"), ("status", "101")]
        ),
        2.0
    );
    assert_eq!(r("relay_tunnels_open", &[NS, HC]), 0.0);
    assert_eq!(
        r(
            "relay_tunnel_bytes_total",
            &[NS, HC, ("direction", "sender_to_listener")]
        ),
        6000.0,
        "{}",
        relay.1
    );
    assert_eq!(
        r(
            "relay_tunnel_bytes_total",
            &[NS, HC, ("direction", "listener_to_sender")]
        ),
        6000.0
    );
    assert_eq!(
        r("relay_rendezvous_duration_seconds_count", &[NS, HC]),
        2.0,
        "{}",
        relay.1
    );
    assert_eq!(
        r(
            "relay_http_requests_total",
            &[NS, HC, ("status", "401"), ("path", "relay")]
        ),
        1.0,
        "{}",
        relay.1
    );
    assert_eq!(
        r(
            "relay_http_requests_total",
            &[NS, HC, ("status", "501"), ("path", "control_channel")]
        ),
        1.0
    );
    assert_eq!(
        r(
            "relay_authentication_failures_total",
            &[NS, ("reason", "missing_token")]
        ),
        1.0
    );
    assert_eq!(
        r(
            "relay_tunnels_total",
            &[
                ("namespace", "default"),
                ("hybrid_connection", ""),
                ("outcome", "not_found"),
                ("status", "404")
            ]
        ),
        1.0,
        "{}",
        relay.1
    );
    assert!(r("process_open_fds", &[]) > 0.0);
    assert!(r("process_resident_memory_bytes", &[]) > 1e6);
    assert!(relay.1.contains("# TYPE relay_tunnels_total counter"));
    assert!(relay.1.contains("# HELP relay_tunnel_bytes_total "));

    // --log-format json: one JSON object per line; one record per tunnel with its TrackingId,
    // names, bytes, duration and outcome.
    let log = c.relay.log_text();
    let records: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let mut tunnels: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["message"] == "tunnel closed")
        .collect();
    tunnels.sort_by_key(|r| r["sender_to_listener"].as_u64());
    assert_eq!(tunnels.len(), 2, "{log}");
    for (record, bytes) in tunnels.iter().zip([1000, 5000]) {
        assert_eq!(record["sender_to_listener"], bytes, "{record}");
        assert_eq!(record["listener_to_sender"], bytes);
        assert_eq!(record["namespace"], "default");
        assert_eq!(record["hybrid_connection"], "chain");
        assert_eq!(record["outcome"], "closed");
        assert_eq!(record["level"], "INFO");
        assert!(
            record["tracking_id"]
                .as_str()
                .is_some_and(|t| t.len() >= 36)
        );
        assert!(record["duration_ms"].is_u64() && record["timestamp"].is_string());
    }

    // The HCM and the shim name a hybrid connection by its namespace host and path.
    let key = "localhost/chain";
    let hcm = settled(&c, "hcm", |s| {
        s.get(
            "hcm_tunnel_bytes_total",
            &[("hybrid_connection", key), ("direction", "from_endpoint")],
        ) == 6000.0
    })
    .await;
    let h = |name: &str| hcm.get(name, &[("hybrid_connection", key)]);
    assert_eq!(h("hcm_control_channels_open"), 1.0, "{}", hcm.1);
    assert_eq!(h("hcm_connected"), 1.0);
    assert_eq!(h("hcm_control_channel_connects_total"), 1.0);
    assert_eq!(h("hcm_control_channel_losses_total"), 0.0);
    assert_eq!(h("hcm_tunnels_total"), 2.0);
    assert_eq!(h("hcm_tunnels_open"), 0.0);
    assert_eq!(h("hcm_tunnels_failed_total"), 0.0);
    assert_eq!(h("hcm_endpoint_dial_failures_total"), 0.0);
    assert_eq!(h("hcm_endpoint_reachable"), 1.0);
    assert_eq!(h("hcm_relay_listeners"), 1.0);
    assert_eq!(
        hcm.get(
            "hcm_tunnel_bytes_total",
            &[("hybrid_connection", key), ("direction", "to_endpoint")]
        ),
        6000.0
    );
    assert!(hcm.has("process_resident_memory_bytes"));

    let shim = settled(&c, "shim", |s| {
        s.get(
            "shim_tunnels_closed_total",
            &[("hybrid_connection", key), ("outcome", "closed")],
        ) == 2.0
    })
    .await;
    let s = |name: &str, extra: (&str, &str)| shim.get(name, &[("hybrid_connection", key), extra]);
    assert_eq!(
        s("shim_tunnels_total", ("outcome", "opened")),
        2.0,
        "{}",
        shim.1
    );
    assert_eq!(s("shim_tunnels_total", ("outcome", "connect_failed")), 0.0);
    assert_eq!(
        s("shim_tunnel_bytes_total", ("direction", "to_endpoint")),
        6000.0
    );
    assert_eq!(
        s("shim_tunnel_bytes_total", ("direction", "from_endpoint")),
        6000.0
    );
    assert_eq!(
        shim.get("shim_tunnels_open", &[("hybrid_connection", key)]),
        0.0
    );
    assert_eq!(shim.get("shim_routes", &[]), 1.0);
}

/// Reads what the echo sent back for `n` bytes written.
async fn write_and_echo(s: &mut TcpStream, n: usize) {
    let data = vec![7u8; n];
    s.write_all(&data).await.unwrap();
    let mut back = vec![0u8; n];
    s.read_exact(&mut back).await.unwrap();
    assert_eq!(back, data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromium-driver (Debian packages); --include-ignored runs it"]
async fn the_status_page_shows_listeners_and_tunnels_live_in_a_browser() {
    let echo = servers::echo_server().await;
    let c = ChainBuilder::new(echo.to_string())
        .plain(true)
        .start()
        .await
        .unwrap();
    // Two live tunnels with different byte counts.
    let mut first = TcpStream::connect(c.forward).await.unwrap();
    write_and_echo(&mut first, 1234).await;
    let mut second = TcpStream::connect(c.forward).await.unwrap();
    write_and_echo(&mut second, 4321).await;
    // And one refusal for the page's list.
    assert_eq!(upgrade(&c, "/$hc/missing?sb-hc-action=connect"), 404);

    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://localhost:{}/$status", c.relay_port);
    let (browser, dir) = tokio::task::spawn_blocking(move || {
        let b = integration_tests::browser::Browser::start(dir.path()).unwrap();
        b.open(&url).unwrap();
        (b, dir)
    })
    .await
    .unwrap();
    let hc = r#"document.querySelector('div.hc[data-hc="default/chain"]')"#;
    let rows = |what: &str| format!("{hc}.querySelectorAll('tr.{what}')");
    let byte_cells = format!(
        "Array.from({}).map(r => Number(r.querySelector('td.up').dataset.bytes)).sort((a, b) => a - b).join(',')",
        rows("tunnel")
    );
    let browser = std::sync::Arc::new(browser);
    let b = browser.clone();
    let (rows_l, rows_t, cells) = (rows("listener"), rows("tunnel"), byte_cells.clone());
    let shot = tokio::task::spawn_blocking(move || {
        b.until(
            &format!(
                "const hc = {hc}; return !!hc && {rows_l}.length === 1 && {rows_t}.length === 2 && {cells} === '1234,4321' && document.querySelectorAll('#refusals tr.refusal').length === 1"
            ),
            Duration::from_secs(20),
        )
        .unwrap();
        // Drawn by the page itself: the namespace, the hybrid connection's name and endpoint.
        let text = b
            .eval(&format!("return {hc}.innerText"))
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned();
        assert!(text.contains("chain") && text.contains("1 listener") && text.contains("2 tunnels"), "{text}");
        assert!(text.contains("1.2 KiB") && text.contains("4.2 KiB"), "{text}");
        assert!(text.contains(&format!("endpoint {echo}")), "{text}");
        let refusal = b
            .eval("return document.querySelector('#refusals tr.refusal').innerText")
            .unwrap();
        assert!(refusal.as_str().unwrap().contains("404") && refusal.as_str().unwrap().contains("missing"), "{refusal}");
        // Marks this page instance: a reload would lose the mark.
        b.eval("window.__stillTheSamePage = true; return true").unwrap();
        b.screenshot().unwrap()
    })
    .await
    .unwrap();
    assert!(shot.starts_with(b"\x89PNG"), "a PNG screenshot");
    let path = std::env::temp_dir().join("hc-emulator-status-page.png");
    std::fs::write(&path, &shot).unwrap();
    eprintln!("screenshot: {}", path.display());

    // Close one tunnel: the page follows without a reload.
    first.shutdown().await.unwrap();
    let mut rest = Vec::new();
    first.read_to_end(&mut rest).await.unwrap();
    drop(first);
    let rows_t = rows("tunnel");
    page_until(
        &browser,
        format!(
            "return window.__stillTheSamePage === true && {rows_t}.length === 1 && {byte_cells} === '4321'"
        ),
    )
    .await;

    // An injected fault appears in its table, live, and goes when cleared (issue 15).
    let spec = r#"{"kind":"shapeTunnels","latencyMs":5,"hybridConnection":"chain"}"#;
    let (status, _) =
        hc_emulator::procs::http_request(c.relay_addr, "POST", "/$faults", Some(spec), None)
            .unwrap();
    assert_eq!(status, 201);
    page_until(
        &browser,
        "const row = document.querySelector('#faults tr.fault[data-id=\"f1\"]'); return window.__stillTheSamePage === true && !document.getElementById('faults').hidden && !!row && row.dataset.kind === 'shapeTunnels' && row.innerText.includes('latencyMs=5')".into(),
    )
    .await;
    let (status, _) =
        hc_emulator::procs::http_request(c.relay_addr, "DELETE", "/$faults", None, None).unwrap();
    assert_eq!(status, 200);
    page_until(
        &browser,
        "return document.getElementById('faults').hidden && document.querySelectorAll('#faults tr.fault').length === 0".into(),
    )
    .await;
    write_and_echo(&mut second, 10).await;
    drop(browser);
    drop(dir);
}

/// Waits (20 s at most, off the runtime's threads) until `script` returns true in the page.
async fn page_until(browser: &std::sync::Arc<integration_tests::browser::Browser>, script: String) {
    let b = browser.clone();
    tokio::task::spawn_blocking(move || b.until(&script, Duration::from_secs(20)).unwrap())
        .await
        .unwrap();
}

/// A GET to an in-memory relay from `peer`; the status and body.
async fn get_from(
    relay: &relay_server::Relay,
    peer: [u8; 4],
    host: &str,
    path: &str,
    headers: &str,
) -> (u16, String) {
    integration_tests::mem::request_from(relay, peer, "GET", host, path, headers, "").await
}

#[tokio::test]
async fn the_status_endpoints_are_for_loopback_or_manage_rights() {
    let config = integration_tests::mem::TWO_NAMESPACES;
    let parsed = relay_server::ConfigFile::parse(config).unwrap();
    let relay =
        relay_server::Relay::in_memory(&parsed, relay_server::RelayOptions::default()).unwrap();
    let token = integration_tests::mem::alphans_token_header;
    let remote = [10, 1, 2, 3];
    // Loopback: no credentials needed, every namespace shown.
    let (status, body) = get_from(&relay, [127, 0, 0, 1], "localhost", "/$status/api", "").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"alphans\"") && body.contains("\"betans\""),
        "{body}"
    );
    // Elsewhere: 401 without a token, naming what is needed.
    for path in [
        "/metrics",
        "/$status/api",
        "/$status",
        "/readyz",
        "/$status/events",
    ] {
        let (status, body) = get_from(&relay, remote, "alphans.localhost", path, "").await;
        assert_eq!(status, 401, "{path}: {body}");
        assert!(body.contains("Manage"), "{body}");
    }
    // A token without Manage: 403.
    let (status, _) = get_from(
        &relay,
        remote,
        "alphans.localhost",
        "/metrics",
        &token("listen-only", "alphans-listen-key"),
    )
    .await;
    assert_eq!(status, 403);
    // A forged bearer: 401.
    let (status, body) = get_from(
        &relay,
        remote,
        "alphans.localhost",
        "/metrics",
        "Authorization: Bearer a.b.c\r\n",
    )
    .await;
    assert_eq!(status, 401, "{body}");
    // Manage on alphans: alphans only, never betans.
    let manage = token("RootManageSharedAccessKey", "alphans-manage-key");
    let (status, body) =
        get_from(&relay, remote, "alphans.localhost", "/$status/api", &manage).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"a1\"") && !body.contains("betans") && !body.contains("\"b1\""),
        "{body}"
    );
    // The listen-only refusal above is alphans's; a refusal in betans would not show here.
    let (status, body) = get_from(&relay, remote, "alphans.localhost", "/metrics", &manage).await;
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("namespace=\"betans\""), "{body}");
    // A token in the query works too (the page passes it along to its API and events).
    let query = format!(
        "/readyz?sb-hc-token={}",
        manage
            .trim_start_matches("ServiceBusAuthorization: ")
            .trim_end()
            .replace('%', "%25")
            .replace(' ', "%20")
            .replace('&', "%26")
            .replace('=', "%3D")
            .replace('+', "%2B")
    );
    // (Let in: an in-memory relay serves no socket, so it is honestly not ready.)
    let (status, body) = get_from(&relay, remote, "alphans.localhost", &query, "").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("not listening"), "{body}");
    // --status-open serves everyone.
    let open = relay_server::Relay::in_memory(
        &parsed,
        relay_server::RelayOptions {
            status_open: true,
            ..Default::default()
        },
    )
    .unwrap();
    let (status, body) = get_from(&open, remote, "alphans.localhost", "/healthz", "").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
}

/// Issue 16: TLS sessions resume on every hop to the relay (the shim's connects and the
/// HCM's rendezvous connections present the tickets of earlier ones), which
/// `relay_tls_handshakes_total` shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_sessions_resume_on_every_hop() {
    let echo = servers::echo_server().await;
    let c = ChainBuilder::new(echo.to_string()).start().await.unwrap();
    for size in [10, 20, 30, 40, 50] {
        echo_through(&c, size).await;
    }
    let text = c.metrics("relay").unwrap();
    let relay = Scrape::parse(&text);
    let full = relay.get("relay_tls_handshakes_total", &[("kind", "full")]);
    let resumed = relay.get("relay_tls_handshakes_total", &[("kind", "resumed")]);
    // 5 tunnels: 5 shim connections and 5 HCM rendezvous connections, all but the shim's
    // first able to resume (the HCM's control channel brought its tickets).
    assert!(resumed >= 8.0, "full {full}, resumed {resumed}\n{text}");
    assert!(
        full >= 1.0 && full < resumed,
        "full {full}, resumed {resumed}"
    );
}
