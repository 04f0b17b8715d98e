//! The whole chain with real programs at both ends: client -> app-side-shim -> relay-server ->
//! hcm -> server, each a separate process started as a user would start it. The Redis and
//! PostgreSQL tests are ignored by default (`--include-ignored` runs them; CI does).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use hc_emulator::chain::{Chain, ChainBuilder};
use hc_emulator::servers;
use integration_tests::external::{self, Postgres};
use integration_tests::metric;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn start(endpoint: String) -> Chain {
    Chain::start(&endpoint).await.expect("chain starts")
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server and redis-cli; --include-ignored runs it"]
async fn redis_cli_does_real_work_through_the_tunnel() {
    let work = tempfile::tempdir().unwrap();
    let (_redis, port) = external::redis(work.path()).unwrap();
    let c = start(format!("127.0.0.1:{port}")).await;
    let (h, p) = (c.forward.ip().to_string(), c.forward.port().to_string());
    let out = tokio::task::spawn_blocking(move || {
        let cli = |args: &[&str]| run("redis-cli", &[&["-h", &h, "-p", &p], args].concat());
        assert_eq!(cli(&["SET", "greeting", "through the tunnel"]).trim(), "OK");
        assert_eq!(cli(&["GET", "greeting"]).trim(), "through the tunnel");
        cli(&["-r", "200", "INCR", "counter"]);
        let big = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(big.path(), "x".repeat(1024 * 1024)).unwrap();
        let out = Command::new("redis-cli")
            .args(["-h", &h, "-p", &p, "-x", "SET", "big"])
            .stdin(std::fs::File::open(big.path()).unwrap())
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");
        (
            cli(&["GET", "counter"]),
            cli(&["STRLEN", "big"]),
            cli(&["DBSIZE"]),
        )
    })
    .await
    .unwrap();
    assert_eq!(
        (out.0.trim(), out.1.trim(), out.2.trim()),
        ("200", "1048576", "3"),
        "{}",
        c.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (initdb, pg_ctl, psql); --include-ignored runs it"]
async fn psql_does_real_work_through_the_tunnel() {
    let work = tempfile::tempdir().unwrap();
    let pg = tokio::task::spawn_blocking({
        let dir = work.path().to_owned();
        move || Postgres::start(&dir)
    })
    .await
    .unwrap()
    .expect("postgres starts");
    let c = start(format!("127.0.0.1:{}", pg.port)).await;
    let (h, p) = (c.forward.ip().to_string(), c.forward.port().to_string());
    let sql = "create table t(i int, s text); insert into t select g, md5(g::text) from generate_series(1, 20000) g; select count(*), sum(i), count(distinct s) from t;";
    let out = tokio::task::spawn_blocking(move || {
        run(
            "psql",
            &[
                "-h",
                &h,
                "-p",
                &p,
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-v",
                "ON_ERROR_STOP=1",
                "-At",
                "-c",
                sql,
            ],
        )
    })
    .await
    .unwrap();
    assert_eq!(
        out.lines().last().unwrap_or_default(),
        "20000|200010000|20000",
        "{out}\n{}",
        c.logs()
    );
}

/// Deterministic bytes (xorshift), so both ends can be hashed without keeping them.
fn fill(buf: &mut [u8], state: &mut u64) {
    for chunk in buf.chunks_mut(8) {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarter_gigabyte_each_way_arrives_intact() {
    const TOTAL: usize = 256 * 1024 * 1024;
    let echo = servers::echo_server().await;
    let c = start(echo.to_string()).await;
    let started = std::time::Instant::now();
    let tcp = TcpStream::connect(c.forward).await.unwrap();
    let (mut r, mut w) = tcp.into_split();
    let writer = tokio::spawn(async move {
        let (mut state, mut hash, mut buf) = (
            0x9e37_79b9_7f4a_7c15u64,
            Sha256::new(),
            vec![0u8; 256 * 1024],
        );
        let mut sent = 0;
        while sent < TOTAL {
            fill(&mut buf, &mut state);
            w.write_all(&buf).await.unwrap();
            hash.update(&buf);
            sent += buf.len();
        }
        w.shutdown().await.unwrap();
        hash.finalize()
    });
    let (mut hash, mut received, mut buf) = (Sha256::new(), 0usize, vec![0u8; 256 * 1024]);
    loop {
        let n = r.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        received += n;
    }
    let sent_hash = writer.await.unwrap();
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "256 MiB each way in {secs:.1} s ({:.0} MiB/s each way)",
        256.0 / secs
    );
    assert_eq!(received, TOTAL, "{}", c.logs());
    assert_eq!(
        hash.finalize(),
        sent_hash,
        "SHA-256 of what came back equals what was sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_tunnels_account_for_every_byte() {
    const N: usize = 200;
    const EACH: usize = 64 * 1024;
    let echo = servers::echo_server().await;
    let c = start(echo.to_string()).await;
    let forward = c.forward;
    let tunnels: Vec<_> = (0..N)
        .map(|i| {
            tokio::spawn(async move {
                let data: Vec<u8> = (0..EACH).map(|j| (i * 7 + j) as u8).collect();
                let mut s = TcpStream::connect(forward).await?;
                s.write_all(&data).await?;
                s.shutdown().await?;
                let mut back = Vec::new();
                s.read_to_end(&mut back).await?;
                anyhow::ensure!(
                    back == data,
                    "tunnel {i}: {} bytes back, content differs",
                    back.len()
                );
                Ok::<usize, anyhow::Error>(back.len())
            })
        })
        .collect();
    let mut errors = Vec::new();
    let mut bytes = 0;
    for t in tunnels {
        match t.await.unwrap() {
            Ok(n) => bytes += n,
            Err(e) => errors.push(e.to_string()),
        }
    }
    assert!(
        errors.is_empty(),
        "{} errors: {:?}\n{}",
        errors.len(),
        &errors[..errors.len().min(5)],
        c.logs()
    );
    assert_eq!(bytes, N * EACH);
    // The HCM counted every byte both ways.
    let expected = (N * EACH) as u64;
    for _ in 0..500 {
        if c.hcm_status().is_some_and(|s| {
            s.bytes_to_endpoint == expected
                && s.bytes_from_endpoint == expected
                && s.tunnels_total == N as u64
        }) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("hcm counters: {:?}", c.hcm_status());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_in_both_directions() {
    // The client shuts down its write side and still receives the whole reply.
    let echo = servers::echo_server().await;
    let c = start(echo.to_string()).await;
    let mut s = TcpStream::connect(c.forward).await.unwrap();
    let request = vec![42u8; 3 * 1024 * 1024];
    s.write_all(&request).await.unwrap();
    s.shutdown().await.unwrap();
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).await.unwrap();
    assert!(
        reply == request,
        "{} of {} bytes",
        reply.len(),
        request.len()
    );
    drop(c);

    // The server closes first: the client reads the greeting, then EOF.
    let greeter = servers::greeter_server(b"bye from the server\n").await;
    let c = start(greeter.to_string()).await;
    let mut s = TcpStream::connect(c.forward).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
        .await
        .expect("EOF, not a hang")
        .unwrap();
    assert_eq!(got, b"bye from the server\n");
}

/// What `read` gives once it has held for 10 checks 20 ms apart while `idle` holds (at most
/// 10 s; then the last reading).
async fn steady<T: PartialEq>(read: impl Fn() -> T, idle: impl Fn() -> bool) -> T {
    let mut last = read();
    let mut held = 0;
    for _ in 0..500 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = read();
        held = if now == last && idle() { held + 1 } else { 0 };
        last = now;
        if held == 10 {
            break;
        }
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_clients_leave_nothing_behind() {
    let sink = servers::sink_server().await;
    // Without warm connections, whose coming and going would move the counts (the next
    // test checks that those are let go).
    let c = ChainBuilder::new(sink.to_string())
        .hcm_args(["--warm-connections", "0"])
        .shim_args(["--warm-connections", "0"])
        .start()
        .await
        .expect("chain starts");
    // One tunnel first, so lazily created state (connection pools, log files) is in the baseline.
    let mut warm = TcpStream::connect(c.forward).await.unwrap();
    warm.write_all(b"warm").await.unwrap();
    warm.shutdown().await.unwrap();
    let mut nothing = Vec::new();
    warm.read_to_end(&mut nothing).await.unwrap();
    let settled = || {
        (
            c.relay.fd_count(),
            c.hcm.as_ref().unwrap().fd_count(),
            c.shim.fd_count(),
        )
    };
    // The baseline is taken once the warm tunnel is gone everywhere: the HCM counts no live
    // tunnel and the counts stay the same for 10 checks in a row (a single repeat could fall
    // while the HCM still held the warm tunnel's endpoint socket, CI saw 14 -> 13).
    let baseline = steady(settled, || {
        c.hcm_status().is_some_and(|s| s.tunnels_active == 0)
    })
    .await;
    for _ in 0..20 {
        let s = TcpStream::connect(c.forward).await.unwrap();
        let (_r, mut w) = s.into_split();
        w.write_all(&vec![7u8; 4 * 1024 * 1024]).await.unwrap();
        let s = _r.reunite(w).unwrap();
        s.set_zero_linger().unwrap();
        drop(s);
    }
    for _ in 0..500 {
        if settled() == baseline && c.hcm_status().is_some_and(|s| s.tunnels_active == 0) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "file descriptors (relay, hcm, shim) {:?} -> {:?}; hcm {:?}",
        baseline,
        settled(),
        c.hcm_status()
    );
}

/// The HCM and the shim keep connections to the relay open ahead of need while tunnels are
/// opened, new tunnels take them (the relay sees ordinary connects), and once no tunnel has
/// been opened for six times `--warm-max-idle`, every one of them is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_connections_serve_new_tunnels_and_are_let_go_when_idle() {
    let echo = servers::echo_server().await;
    let c = ChainBuilder::new(echo.to_string())
        .hcm_args(["--warm-max-idle", "1"])
        .shim_args(["--warm-max-idle", "1"])
        .start()
        .await
        .expect("chain starts");
    let fds = || {
        (
            c.relay.fd_count(),
            c.hcm.as_ref().unwrap().fd_count(),
            c.shim.fd_count(),
        )
    };
    let warm = |which: &str, outcome: &str| {
        let name = format!("{which}_warm_connections_total");
        metric(&c.metrics(which).unwrap(), &name, &[("outcome", outcome)])
    };
    // (The HCM's status file and the relay's state file are open for a moment now and then.)
    let before = steady(fds, || true).await;
    assert_eq!((warm("hcm", "dialed"), warm("shim", "dialed")), (0.0, 0.0));
    let echo_once = |n: u8| async move {
        let mut s = TcpStream::connect(c.forward).await.unwrap();
        s.write_all(&[n; 1000]).await.unwrap();
        s.shutdown().await.unwrap();
        let mut back = Vec::new();
        s.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, vec![n; 1000]);
    };
    echo_once(1).await;
    echo_once(2).await;
    // Used twice: both sides open two connections ahead of need.
    let mut waited = 0;
    while warm("hcm", "dialed") < 2.0 || warm("shim", "dialed") < 2.0 {
        waited += 1;
        assert!(waited < 500, "no warm connections opened");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for n in 3..6 {
        echo_once(n).await;
    }
    assert!(warm("hcm", "hit") >= 1.0, "{}", c.metrics("hcm").unwrap());
    assert!(warm("shim", "hit") >= 1.0, "{}", c.metrics("shim").unwrap());
    assert_eq!(warm("hcm", "miss") + warm("hcm", "hit"), 5.0);
    // Idle for 6 s (6 x --warm-max-idle): every warm connection is closed everywhere.
    let mut waited = 0;
    let above =
        |now: (usize, usize, usize)| now.0 > before.0 || now.1 > before.1 || now.2 > before.2;
    while above(fds()) {
        waited += 1;
        assert!(
            waited < 3000,
            "file descriptors (relay, hcm, shim) {before:?} -> {:?}; warm (hcm, shim): {:?}",
            fds(),
            ["dialed", "hit", "miss", "discarded", "failed"].map(|o| (
                o,
                warm("hcm", o),
                warm("shim", o)
            ))
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(warm("hcm", "discarded") >= 1.0 && warm("shim", "discarded") >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_hcm_fails_the_tunnel_and_a_new_one_serves_again() {
    let echo = servers::echo_server().await;
    let mut c = start(echo.to_string()).await;
    let s = TcpStream::connect(c.forward).await.unwrap();
    let (mut r, mut w) = s.into_split();
    w.write_all(b"before").await.unwrap();
    let mut buf = [0u8; 6];
    r.read_exact(&mut buf).await.unwrap();
    // Keep data flowing while the HCM dies.
    let writer = tokio::spawn(async move {
        let chunk = vec![1u8; 64 * 1024];
        loop {
            if w.write_all(&chunk).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.kill_hcm();
    let ended = tokio::time::timeout(Duration::from_secs(15), async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the client saw neither an error nor EOF: it hangs\n{}",
        c.logs()
    );
    writer.abort();
    tokio::task::spawn_blocking(move || {
        c.restart_hcm().unwrap();
        c
    })
    .await
    .map(|c| async move {
        let mut s = TcpStream::connect(c.forward).await.unwrap();
        s.write_all(b"after restart").await.unwrap();
        s.shutdown().await.unwrap();
        let mut back = Vec::new();
        s.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"after restart", "{}", c.logs());
    })
    .unwrap()
    .await;
}
