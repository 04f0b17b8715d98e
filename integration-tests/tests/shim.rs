//! The shim binary through the relay and the HCM to an HTTP server on a real socket, with
//! `curl` as the unchanged client program where a test says it needs curl (those are ignored
//! by default; `cargo test --workspace -- --include-ignored` runs them, CI does).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use app_side_shim::HybridConnection;
use hc_emulator::chain::banner_value;
use hc_emulator::procs::{self, Proc};
use hc_emulator::servers;
use relay_server::{ConfigFile, Emulator, RelayOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const BODY: &str = "hello through the hybrid connection\n";
const HOST: &str = "api.corp.example";

/// Relay, HCM, HTTP server; hybrid connections `api` (served), `down` (served, endpoint
/// closed), `idle` (no listener).
struct Chain {
    emulator: Emulator,
    dir: tempfile::TempDir,
    http_port: u16,
    hcm_stop: CancellationToken,
    hcm: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Chain {
    async fn start() -> Chain {
        let dir = tempfile::tempdir().unwrap();
        let http_port = servers::http_server("/hello.txt", BODY).await.port();
        let emulator = Emulator::start(&ConfigFile::default(), true, RelayOptions::default())
            .await
            .unwrap();
        std::fs::write(dir.path().join("ca.pem"), emulator.ca_pem.as_ref().unwrap()).unwrap();
        for hc in ["api", "down", "idle"] {
            emulator
                .relay
                .put_hybrid_connection("default", hc, true, None)
                .unwrap();
        }
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let hcm_dir = dir.path().join("hcm");
        let mut config = hcm::config::Config::default();
        for (hc, endpoint) in [
            ("api", format!("127.0.0.1:{http_port}")),
            ("down", closed.to_string()),
        ] {
            let cs = emulator
                .relay
                .connection_string(
                    "default",
                    Some(hc),
                    "defaultListener",
                    &emulator.authority(),
                )
                .unwrap()
                .expose();
            config.connections.push(
                hcm::config::Entry::new(&cs, Some(endpoint), 1, Some(dir.path().join("ca.pem")))
                    .unwrap(),
            );
        }
        config.save(&hcm_dir).unwrap();
        let hcm_stop = CancellationToken::new();
        let options = hcm::service::ServiceOptions {
            data_dir: hcm_dir,
            worker: hcm::worker::WorkerOptions {
                backoff_base: Duration::from_millis(50),
                backoff_cap: Duration::from_millis(300),
                ..Default::default()
            },
            grace: Duration::from_secs(2),
            reload_interval: Duration::from_millis(100),
            exit_on_failure: None,
            metrics_listen: None,
        };
        let stop = hcm_stop.clone();
        let hcm = tokio::spawn(async move {
            hcm::service::run(options, async move { stop.cancelled().await }).await
        });
        let chain = Chain {
            emulator,
            dir,
            http_port,
            hcm_stop,
            hcm,
        };
        for _ in 0..1000 {
            if chain.emulator.relay.listener_count("default", "api") == 1
                && chain.emulator.relay.listener_count("default", "down") == 1
            {
                return chain;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the HCM did not connect");
    }

    fn send_string(&self, hc: &str) -> String {
        self.emulator
            .relay
            .connection_string(
                "default",
                Some(hc),
                "defaultSender",
                &self.emulator.authority(),
            )
            .unwrap()
            .expose()
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A shim config: `api` at api.corp.example:{http port}, plus the failure cases.
    fn shim_config(&self) -> PathBuf {
        let wrong_key = self
            .send_string("api")
            .replace("SharedAccessKey=", "SharedAccessKey=x");
        let dead_relay = self
            .send_string("api")
            .replace(&format!(":{}/", self.emulator.addr.port()), ":1/");
        let nope = self
            .send_string("api")
            .replace("EntityPath=api", "EntityPath=nope");
        let entries = serde_json::json!({
            "caFile": self.ca(),
            "hybridConnections": [
                {"connectionString": self.send_string("api"), "hostname": HOST, "port": self.http_port},
                {"connectionString": self.send_string("down"), "hostname": "down.corp.example", "port": 80},
                {"connectionString": self.send_string("idle"), "hostname": "idle.corp.example", "port": 80},
                {"connectionString": wrong_key, "hostname": "badkey.corp.example", "port": 80},
                {"connectionString": dead_relay, "hostname": "norelay.corp.example", "port": 80},
                {"connectionString": nope, "hostname": "nope.corp.example", "port": 80},
            ]
        });
        let path = self.dir.path().join("shim.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&entries).unwrap()).unwrap();
        path
    }

    async fn stop(self) {
        self.hcm_stop.cancel();
        self.hcm.await.unwrap().unwrap();
        self.emulator.stop().await.unwrap();
    }
}

/// The shim binary and what it printed up to "Ready.".
struct Shim {
    proc: Proc,
    lines: Vec<String>,
}

impl Shim {
    fn start(dir: &Path, args: &[&str]) -> Shim {
        let log = dir.join(format!("shim-{}.log", rand_suffix()));
        let (proc, lines) = Proc::start(
            &procs::binary("app-side-shim").unwrap(),
            args,
            log,
            Some("Ready."),
        )
        .unwrap();
        Shim { proc, lines }
    }

    /// The address printed on the line starting with `prefix` (after "-> " for hostnames).
    fn addr(&self, prefix: &str) -> String {
        let rest = banner_value(&self.lines, prefix)
            .unwrap_or_else(|| panic!("no '{prefix}' in {:?}", self.lines));
        let rest = rest.split_once("-> ").map_or(rest.as_str(), |(_, to)| to);
        rest.split_whitespace().next().unwrap().to_owned()
    }

    /// SIGTERM; asserts a clean exit and returns the log.
    fn stop(&mut self) -> String {
        let status = self.proc.terminate().unwrap();
        let log = self.proc.log_text();
        assert!(status.success(), "shim exited with {status}: {log}");
        log
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

async fn curl(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args(["-sS", "--max-time", "20"])
            .args(&args)
            .output()
            .expect("curl is needed")
    })
    .await
    .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn library_streams_with_half_close_and_tells_errors_apart() {
    let chain = Chain::start().await;
    let tls = hc_client::tls::client_config(Some(&chain.ca())).unwrap();
    let hc =
        HybridConnection::from_connection_string(&chain.send_string("api"), tls.clone()).unwrap();
    let mut stream = hc.connect().await.unwrap();
    stream
        .write_all(b"GET /hello.txt HTTP/1.0\r\nHost: api\r\n\r\n")
        .await
        .unwrap();
    stream.shutdown().await.unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await.unwrap();
    assert!(
        reply.starts_with("HTTP/1.0 200") && reply.ends_with(BODY),
        "{reply}"
    );

    let connect = |cs: String| {
        let tls = tls.clone();
        async move {
            HybridConnection::from_connection_string(&cs, tls)
                .unwrap()
                .connect()
                .await
                .unwrap_err()
        }
    };
    assert!(connect(chain.send_string("idle")).await.is_no_listener());
    assert!(
        connect(
            chain
                .send_string("api")
                .replace("EntityPath=api", "EntityPath=nope")
        )
        .await
        .is_endpoint_not_found()
    );
    assert!(
        connect(
            chain
                .send_string("api")
                .replace("SharedAccessKey=", "SharedAccessKey=x")
        )
        .await
        .is_unauthorized()
    );
    let rejected = connect(chain.send_string("down")).await;
    assert!(
        rejected.is_rejected()
            && rejected.status() == Some(502)
            && rejected.to_string().contains("is unreachable"),
        "{rejected}"
    );
    assert!(
        connect(
            chain
                .send_string("api")
                .replace(&format!(":{}/", chain.emulator.addr.port()), ":1/")
        )
        .await
        .is_network()
    );
    chain.stop().await;
}

/// An HTTP/1.0 GET of `/hello.txt` over a plain TCP connection to `addr`; the whole answer.
async fn http_get(addr: &str) -> String {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /hello.txt HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let (got, closed) = read_all_within(&mut tcp, Duration::from_secs(20)).await;
    assert!(closed, "the answer ends with a close");
    String::from_utf8(got).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_forwards_carry_a_client_to_the_endpoint() {
    let chain = Chain::start().await;
    let config = chain.shim_config();
    let by_endpoint = format!("127.0.0.1:0={HOST}:{}", chain.http_port);
    let by_string = format!("127.0.0.1:0={}", chain.send_string("api"));
    let ca = chain.ca();
    let mut shim = Shim::start(
        chain.dir.path(),
        &[
            "--config",
            config.to_str().unwrap(),
            "--ca-file",
            ca.to_str().unwrap(),
            "run",
            "--forward",
            &by_endpoint,
            "--forward",
            &by_string,
        ],
    );
    let forwards: Vec<String> = shim
        .lines
        .iter()
        .filter(|l| l.starts_with("Forwarding "))
        .map(|l| l.split_whitespace().nth(1).unwrap().to_owned())
        .collect();
    assert_eq!(forwards.len(), 2);
    for addr in forwards {
        let answer = http_get(&addr).await;
        assert!(
            answer.starts_with("HTTP/1.0 200 OK") && answer.ends_with(BODY),
            "{answer}"
        );
    }
    let log = shim.stop();
    assert!(
        log.contains("tunnel") && log.contains("from_endpoint="),
        "{log}"
    );
    assert!(!log.contains("SharedAccessKey="), "keys never logged");
    chain.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, unshare and curl; --include-ignored runs it"]
async fn hostname_mode_lets_unchanged_curl_use_the_real_name() {
    let chain = Chain::start().await;
    let config = chain.shim_config();
    let hosts = chain.dir.path().join("hosts");
    std::fs::copy("/etc/hosts", &hosts).unwrap();
    let before = std::fs::read_to_string(&hosts).unwrap();
    let mut shim = Shim::start(
        chain.dir.path(),
        &[
            "--config",
            config.to_str().unwrap(),
            "run",
            "--hostnames",
            "--hosts-file",
            hosts.to_str().unwrap(),
        ],
    );
    let written = std::fs::read_to_string(&hosts).unwrap();
    assert!(
        written.contains(&format!("127.77.0.1\t{HOST}")),
        "{written}"
    );
    assert_eq!(
        shim.addr(&format!("Hostname {HOST}")),
        format!("127.77.0.1:{}", chain.http_port)
    );
    // curl resolves the name through the hosts file, in a private mount namespace.
    let script = format!(
        "mount --bind {} /etc/hosts && exec curl -sS --max-time 20 http://{HOST}:{}/hello.txt",
        hosts.display(),
        chain.http_port
    );
    let out = tokio::task::spawn_blocking(move || {
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout) == BODY,
        "{}",
        text(&out)
    );
    shim.stop();
    assert_eq!(
        std::fs::read_to_string(&hosts).unwrap(),
        before,
        "the block is removed on exit"
    );
    chain.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs curl; --include-ignored runs it"]
async fn proxy_mode_tunnels_names_and_refuses_others() {
    let chain = Chain::start().await;
    let config = chain.shim_config();
    let mut shim = Shim::start(
        chain.dir.path(),
        &[
            "--config",
            config.to_str().unwrap(),
            "run",
            "--socks5",
            "127.0.0.1:0",
            "--http-proxy",
            "127.0.0.1:0",
        ],
    );
    let socks = shim.addr("SOCKS5 proxy on ");
    let http = shim.addr("HTTP CONNECT proxy on ");
    let url = format!("http://{HOST}:{}/hello.txt", chain.http_port);
    let out = curl(vec!["--socks5-hostname".into(), socks.clone(), url.clone()]).await;
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout) == BODY,
        "{}",
        text(&out)
    );
    let out = curl(vec![
        "-p".into(),
        "-x".into(),
        format!("http://{http}"),
        url,
    ])
    .await;
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout) == BODY,
        "{}",
        text(&out)
    );
    // Refused: another host, and the endpoint's IP literal.
    let other = curl(vec![
        "--socks5-hostname".into(),
        socks.clone(),
        format!("http://other.example:{}/", chain.http_port),
    ])
    .await;
    assert!(!other.status.success());
    let literal = curl(vec![
        "--socks5-hostname".into(),
        socks,
        format!("http://127.0.0.1:{}/hello.txt", chain.http_port),
    ])
    .await;
    assert!(!literal.status.success());
    let mut tcp = tokio::net::TcpStream::connect(&http).await.unwrap();
    tcp.write_all(format!("CONNECT 127.0.0.1:{} HTTP/1.1\r\n\r\n", chain.http_port).as_bytes())
        .await
        .unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 403")
            && answer.contains("is an IP address; hybrid connections match endpoint host names"),
        "{answer}"
    );
    let log = shim.stop();
    assert!(
        log.contains("other.example")
            && log.contains("not the endpoint of any configured hybrid connection"),
        "{log}"
    );
    assert!(log.contains("is an IP address"), "{log}");
    // With --allow-direct, a request that matches no endpoint is connected directly.
    let mut direct = Shim::start(
        chain.dir.path(),
        &[
            "--config",
            config.to_str().unwrap(),
            "run",
            "--socks5",
            "127.0.0.1:0",
            "--allow-direct",
        ],
    );
    let socks = direct.addr("SOCKS5 proxy on ");
    let out = curl(vec![
        "--socks5-hostname".into(),
        socks,
        format!("http://127.0.0.1:{}/hello.txt", chain.http_port),
    ])
    .await;
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout) == BODY,
        "{}",
        text(&out)
    );
    direct.stop();
    chain.stop().await;
}

async fn tcpping(config: &Path, endpoint: &str) -> (bool, String) {
    let (config, endpoint) = (config.to_owned(), endpoint.to_owned());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(procs::binary("app-side-shim").unwrap())
            .args([
                "--config",
                config.to_str().unwrap(),
                "tcpping",
                &endpoint,
                "-n",
                "2",
                "--interval",
                "0",
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    (out.status.success(), text(&out))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcpping_reports_success_or_the_failing_hop() {
    let chain = Chain::start().await;
    let config = chain.shim_config();
    let (ok, out) = tcpping(&config, &format!("{HOST}:{}", chain.http_port)).await;
    assert!(
        ok && out.contains("time=") && out.contains("2 tunnels: 2 succeeded, 0 failed"),
        "{out}"
    );
    for (endpoint, says) in [
        ("norelay.corp.example:80", "relay unreachable"),
        ("badkey.corp.example:80", "unauthorized"),
        ("nope.corp.example:80", "hybrid connection does not exist"),
        (
            "idle.corp.example:80",
            "no listener: no Hybrid Connection Manager is connected",
        ),
        (
            "down.corp.example:80",
            "endpoint refused: the Hybrid Connection Manager could not connect to down.corp.example:80",
        ),
    ] {
        let (ok, out) = tcpping(&config, endpoint).await;
        assert!(
            !ok && out.contains(says) && out.contains("0 succeeded, 2 failed"),
            "{endpoint}: {out}"
        );
    }
    let (ok, out) = tcpping(&config, "unknown.example:1").await;
    assert!(!ok && out.contains("not a configured endpoint"), "{out}");
    chain.stop().await;
}

#[test]
fn plan_limits_are_a_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let entries: Vec<serde_json::Value> = (0..6)
        .map(|i| serde_json::json!({"serviceBusNamespace": "contoso", "relayName": format!("hc{i}"), "hostname": format!("h{i}.corp"), "port": 5432, "sendKeyName": "s", "sendKeyValue": "k"}))
        .collect();
    let path = dir.path().join("shim.json");
    std::fs::write(
        &path,
        serde_json::json!({"hybridConnections": entries}).to_string(),
    )
    .unwrap();
    let out = Command::new(procs::binary("app-side-shim").unwrap())
        .args([
            "--config",
            path.to_str().unwrap(),
            "run",
            "--plan",
            "basic",
            "--socks5",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("the Basic plan allows 5 hybrid connections, but 6 are configured"),
        "{}",
        text(&out)
    );
}

/// Reads until EOF or error; returns the bytes and whether the peer closed within `limit`.
async fn read_all_within(tcp: &mut tokio::net::TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let closed = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 256];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (got, closed)
}

/// Silent proxy clients are closed after the handshake deadline instead of holding a
/// descriptor forever; SOCKS5 and HTTP CONNECT alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_proxy_clients_are_closed_after_the_handshake_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let shim = Shim::start(
        dir.path(),
        &[
            "run",
            "--socks5",
            "127.0.0.1:0",
            "--http-proxy",
            "127.0.0.1:0",
            "--handshake-timeout",
            "0.5",
        ],
    );
    for (proxy, partial) in [
        ("SOCKS5 proxy on ", &b"\x05"[..]),
        (
            "HTTP CONNECT proxy on ",
            &b"CONNECT db:5432 HTTP/1.1\r\n"[..],
        ),
    ] {
        let mut clients = Vec::new();
        for _ in 0..20 {
            let mut tcp = tokio::net::TcpStream::connect(shim.addr(proxy))
                .await
                .unwrap();
            tcp.write_all(partial).await.unwrap();
            clients.push(tcp);
        }
        for tcp in &mut clients {
            let (got, closed) = read_all_within(tcp, Duration::from_secs(5)).await;
            assert!(
                closed,
                "{proxy}: a silent client is closed after the deadline"
            );
            if proxy.starts_with("HTTP") {
                assert!(
                    String::from_utf8_lossy(&got).starts_with("HTTP/1.1 408"),
                    "{}",
                    String::from_utf8_lossy(&got)
                );
            }
        }
    }
}

/// `--max-connections` closes connections beyond the cap at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_are_closed_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let shim = Shim::start(
        dir.path(),
        &[
            "run",
            "--socks5",
            "127.0.0.1:0",
            "--max-connections",
            "3",
            "--handshake-timeout",
            "60",
        ],
    );
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut tcp = tokio::net::TcpStream::connect(shim.addr("SOCKS5 proxy on "))
            .await
            .unwrap();
        tcp.write_all(&[5, 1, 0]).await.unwrap();
        let mut answer = [0u8; 2];
        tcp.read_exact(&mut answer).await.unwrap();
        assert_eq!(answer, [5, 0], "the first three are served");
        held.push(tcp);
    }
    // The fourth is closed (reset) as soon as it is accepted; the reset may even beat connect().
    if let Ok(mut fourth) = tokio::net::TcpStream::connect(shim.addr("SOCKS5 proxy on ")).await {
        let _ = fourth.write_all(&[5, 1, 0]).await;
        let (got, closed) = read_all_within(&mut fourth, Duration::from_secs(5)).await;
        assert!(
            closed && got.is_empty(),
            "the fourth is closed at once: {got:?}"
        );
    }
    drop(held);
}

/// After `05 FF` (no acceptable method) the proxy closes; no further reply follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acceptable_method_is_answered_with_two_bytes_only() {
    let dir = tempfile::tempdir().unwrap();
    let shim = Shim::start(dir.path(), &["run", "--socks5", "127.0.0.1:0"]);
    let mut tcp = tokio::net::TcpStream::connect(shim.addr("SOCKS5 proxy on "))
        .await
        .unwrap();
    tcp.write_all(&[5, 1, 2]).await.unwrap();
    let (got, closed) = read_all_within(&mut tcp, Duration::from_secs(5)).await;
    assert!(closed);
    assert_eq!(got, [5, 0xff]);
}

/// A CONNECT client that sends its first bytes right behind the request head, without
/// waiting for the 200, still has them delivered; and `--allow-direct` on a non-loopback
/// address is warned about.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_with_early_data_and_the_allow_direct_warning() {
    let chain = Chain::start().await;
    let config = chain.shim_config();
    let mut shim = Shim::start(
        chain.dir.path(),
        &[
            "--config",
            config.to_str().unwrap(),
            "run",
            "--http-proxy",
            "127.0.0.1:0",
        ],
    );
    let mut tcp = tokio::net::TcpStream::connect(shim.addr("HTTP CONNECT proxy on "))
        .await
        .unwrap();
    let request = format!(
        "CONNECT {HOST}:{} HTTP/1.1\r\n\r\nGET /hello.txt HTTP/1.0\r\n\r\n",
        chain.http_port
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let (got, closed) = read_all_within(&mut tcp, Duration::from_secs(20)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(
        closed && text.starts_with("HTTP/1.1 200 Connection Established") && text.ends_with(BODY),
        "{text}"
    );
    drop(tcp);
    shim.stop();
    let mut open = Shim::start(
        chain.dir.path(),
        &[
            "--config",
            config.to_str().unwrap(),
            "run",
            "--socks5",
            "0.0.0.0:0",
            "--allow-direct",
        ],
    );
    let log = open.stop();
    assert!(
        log.contains("--allow-direct on a proxy bound to a non-loopback address"),
        "{log}"
    );
    chain.stop().await;
}

/// SIGTERM right after "Ready." is a clean stop: the handler is installed before readiness
/// is announced (it used to be installed at the first poll, after it).
#[test]
fn a_stop_signal_right_after_ready_is_a_clean_exit() {
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..10 {
        let mut shim = Shim::start(dir.path(), &["run", "--socks5", "127.0.0.1:0"]);
        shim.stop();
    }
}

/// `--app`: the app's hybrid connections come from its Microsoft.Web resources through the
/// ARM endpoint (no configuration file), and a change there reaches a running shim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_mode_takes_the_apps_relays_from_arm_and_follows_changes() {
    let chain = Chain::start().await;
    let management = chain.emulator.management_addr.unwrap();
    let arm =
        integration_tests::arm::Arm::new(management, chain.emulator.ca_pem.as_deref().unwrap());
    let sub = relay_server::model::DEFAULT_SUBSCRIPTION;
    let relay_uri = format!(
        "/subscriptions/{sub}/resourceGroups/relay-emulator/providers/Microsoft.Relay/namespaces/default/hybridConnections/api"
    );
    let site_relay = format!(
        "/subscriptions/{sub}/resourceGroups/apps/providers/Microsoft.Web/sites/myapp/hybridConnectionNamespaces/default/relays/api?api-version=2022-03-01"
    );
    let put = arm
        .call(
            "PUT",
            &site_relay,
            Some(serde_json::json!({"properties": {"hostname": HOST, "port": chain.http_port, "relayArmUri": relay_uri, "sendKeyName": "defaultSender"}})),
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.body);
    let endpoint = format!("https://localhost:{}/", management.port());
    let ca = chain.ca();
    let mut shim = Shim::start(
        chain.dir.path(),
        &[
            "--ca-file",
            ca.to_str().unwrap(),
            "run",
            "--app",
            "myapp",
            "--arm-endpoint",
            &endpoint,
            "--subscription",
            sub,
            "--resource-group",
            "apps",
            "--arm-token",
            "any",
            "--http-proxy",
            "127.0.0.1:0",
            "--app-refresh",
            "0.5",
        ],
    );
    assert_eq!(
        banner_value(&shim.lines, "App myapp: ").unwrap(),
        format!("{HOST}:{} via default.localhost/api", chain.http_port)
    );
    let proxy = shim.addr("HTTP CONNECT proxy on ");
    let connect = |proxy: String| async move {
        let mut tcp = tokio::net::TcpStream::connect(&proxy).await.unwrap();
        let request = format!(
            "CONNECT {HOST}:{} HTTP/1.1\r\n\r\nGET /hello.txt HTTP/1.0\r\n\r\n",
            chain.http_port
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        let (got, _) = read_all_within(&mut tcp, Duration::from_secs(20)).await;
        String::from_utf8_lossy(&got).into_owned()
    };
    let answer = connect(proxy.clone()).await;
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with(BODY),
        "{answer}"
    );
    // Removed from the app: the running shim refuses it from its next read on.
    assert_eq!(arm.call("DELETE", &site_relay, None).await.status, 200);
    let changed = tokio::time::timeout(Duration::from_secs(20), async {
        while !shim
            .proc
            .log_text()
            .contains("the app's hybrid connections changed")
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(changed.is_ok(), "{}", shim.proc.log_text());
    let answer = connect(proxy).await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    shim.stop();
    chain.stop().await;
}

/// `--app` without a way to get a token, or with an http:// endpoint, is a startup error
/// naming what is missing.
#[test]
fn app_mode_needs_https_and_a_token() {
    let run = |endpoint: &str| {
        let out = Command::new(procs::binary("app-side-shim").unwrap())
            .args([
                "run",
                "--app",
                "myapp",
                "--arm-endpoint",
                endpoint,
                "--subscription",
                "s",
                "--resource-group",
                "g",
                "--socks5",
                "127.0.0.1:0",
            ])
            .env_remove("IDENTITY_ENDPOINT")
            .env_remove("IDENTITY_HEADER")
            .env_remove("SHIM_ARM_TOKEN")
            .output()
            .unwrap();
        (out.status.code(), text(&out))
    };
    let (code, err) = run("https://localhost:1/");
    assert!(
        code == Some(2)
            && err.contains("needs a management token")
            && err.contains("IDENTITY_ENDPOINT"),
        "{err}"
    );
    let (code, err) = run("http://localhost:1/");
    assert!(
        code == Some(2) && err.contains("is not an https:// URL"),
        "{err}"
    );
    let out = Command::new(procs::binary("app-side-shim").unwrap())
        .args(["run", "--app", "myapp", "--socks5", "127.0.0.1:0"])
        .env_remove("SHIM_ARM_ENDPOINT")
        .env_remove("AZURE_SUBSCRIPTION_ID")
        .env_remove("SHIM_RESOURCE_GROUP")
        .output()
        .unwrap();
    assert!(
        out.status.code() == Some(2) && text(&out).contains("--arm-endpoint"),
        "{}",
        text(&out)
    );
}
