//! Floods against the running processes (issue 10): 3,000 idle TCP connections and 500
//! slowloris request heads at the relay, 1,000 silent clients at the shim's SOCKS5 proxy.
//! While they last, a new tunnel through the shim, relay and HCM must open and echo within
//! 2 s; afterwards both processes shed the flood by themselves (handshake deadlines) and
//! their descriptor counts return to where they were.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use hc_emulator::chain::{Chain, ChainBuilder};
use hc_emulator::servers;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// A round trip through a new tunnel; how long it took.
async fn tunnel_round_trip(chain: &Chain) -> Duration {
    let started = Instant::now();
    let mut tcp = TcpStream::connect(chain.forward).await.unwrap();
    tcp.write_all(b"during the flood").await.unwrap();
    let mut got = [0u8; 16];
    tokio::time::timeout(Duration::from_secs(10), tcp.read_exact(&mut got))
        .await
        .expect("echo within 10 s")
        .unwrap();
    assert_eq!(&got, b"during the flood");
    started.elapsed()
}

/// Opens `n` idle connections to `addr`, 50 at a time: with a few hundred SYNs in flight at
/// once this machine's loopback drops some, and each retry costs a second.
async fn connect_many(addr: std::net::SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut all = Vec::with_capacity(n);
    while all.len() < n {
        let batch = (n - all.len()).min(50);
        let opened =
            futures_util::future::join_all((0..batch).map(|_| TcpStream::connect(addr))).await;
        all.extend(opened.into_iter().map(Result::unwrap));
    }
    all
}

/// Waits (at most `limit`) until `count()` is at least `target`; returns the last count.
async fn reach(limit: Duration, target: usize, count: impl Fn() -> usize) -> usize {
    let until = Instant::now() + limit;
    loop {
        let n = count();
        if n >= target || Instant::now() > until {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (at most `limit`) until `count()` is at most `target`; returns the last count.
async fn settle(limit: Duration, target: usize, count: impl Fn() -> usize) -> usize {
    let until = Instant::now() + limit;
    loop {
        let n = count();
        if n <= target || Instant::now() > until {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_do_not_stop_new_tunnels_and_are_shed() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let echo = servers::echo_server().await;
    let chain = ChainBuilder::new(echo.to_string())
        .relay_args([
            "--handshake-timeout",
            "5",
            "--max-connections-per-namespace",
            "100000",
        ])
        .shim_args(["--socks5", "127.0.0.1:0", "--handshake-timeout", "5"])
        .log("warn,relay_server=debug")
        .start()
        .await
        .expect("chain starts");
    let socks = hc_emulator::chain::banner_value(&chain.shim_banner, "SOCKS5 proxy on ")
        .unwrap()
        .parse::<std::net::SocketAddr>()
        .unwrap();
    let relay_addr: std::net::SocketAddr = ([127, 0, 0, 1], chain.relay_port).into();
    tunnel_round_trip(&chain).await;
    let (relay_base, shim_base) = (chain.relay.fd_count(), chain.shim.fd_count());

    let idle = connect_many(relay_addr, 3000).await;
    let relay_peak = reach(Duration::from_secs(2), relay_base + 2500, || {
        chain.relay.fd_count()
    })
    .await;
    let tls = integration_tests::client_tls(&std::fs::read_to_string(&chain.ca).unwrap());
    let slowloris = futures_util::future::join_all((0..500).map(|_| {
        let tls = tls.clone();
        async move {
            let tcp = TcpStream::connect(relay_addr).await.unwrap();
            let mut s = tokio_rustls::TlsConnector::from(Arc::clone(&tls))
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
                .unwrap();
            s.write_all(b"GET /$hc/chain HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
                .await
                .unwrap();
            s.flush().await.unwrap();
            s
        }
    }))
    .await;
    let silent = connect_many(socks, 1000).await;
    let shim_peak = reach(Duration::from_secs(2), shim_base + 900, || {
        chain.shim.fd_count()
    })
    .await;

    let mut worst = Duration::ZERO;
    for _ in 0..3 {
        worst = worst.max(tunnel_round_trip(&chain).await);
    }
    assert!(
        worst < Duration::from_secs(2),
        "a new tunnel took {worst:?} during the flood\n{}",
        chain.logs()
    );

    // The processes shed the flood themselves: the clients keep their sockets open.
    let relay_after = settle(Duration::from_secs(15), relay_base + 4, || {
        chain.relay.fd_count()
    })
    .await;
    let shim_after = settle(Duration::from_secs(15), shim_base + 4, || {
        chain.shim.fd_count()
    })
    .await;
    eprintln!(
        "relay descriptors {relay_base} -> {relay_peak} (highest seen) -> {relay_after}; shim {shim_base} -> {shim_peak} -> {shim_after}; slowest new tunnel during the flood {worst:?}"
    );
    // Every flood connection reached the relay and was shed by its deadline: the relay logs
    // each at debug level.
    let log = chain.relay.log_text();
    let (idle_shed, slow_shed) = (
        log.matches("TLS handshake timed out").count(),
        log.matches("http connection ended with an error").count(),
    );
    assert!(
        idle_shed >= 3000 && slow_shed >= 500,
        "shed by the relay: {idle_shed} idle, {slow_shed} slowloris"
    );
    assert!(
        relay_after <= relay_base + 4,
        "relay kept {relay_after} descriptors (baseline {relay_base})"
    );
    assert!(
        shim_after <= shim_base + 4,
        "shim kept {shim_after} descriptors (baseline {shim_base})"
    );
    drop((idle, slowloris, silent));
    tunnel_round_trip(&chain).await;
    assert_eq!(chain.relay.log_text().matches("panicked").count(), 0);
}
