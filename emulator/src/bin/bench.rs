//! `bench`: the whole chain on loopback — client -> app-side-shim -> relay-server -> hcm ->
//! server, each a separate release process — measured side by side with a direct TCP
//! connection to the same server, in one run:
//!
//! 1. bulk throughput, one stream each way and 8 parallel streams (MiB/s);
//! 2. round trip of a 64-byte ping-pong, p50 and p99 (µs);
//! 3. new tunnels: connect -> first echoed byte, p50/p99 (ms), and tunnels per second with 16
//!    concurrent openers;
//! 4. idle tunnels: resident memory of relay, hcm and shim per tunnel;
//! 5. a half-close echo of the bulk size: bytes back must equal bytes sent, in order.
//!
//! Each with plain WebSockets and with TLS, and, as references in the same run, each peer
//! tunnel that is installed (bore, rathole, wstunnel: `hc_emulator::peers`). `--json` prints one JSON object; `--smoke` runs a
//! seconds-long version (CI checks that the harness works, never its timings).
//!
//! Build first: `cargo build --release --workspace`, then `target/release/bench` (it starts
//! `relay-server`, `hcm` and `app-side-shim` from its own directory, else from `PATH`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use clap::Parser;
use hc_emulator::chain::{Chain, ChainBuilder};
use hc_emulator::servers;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HELP_EXAMPLES: &str = "\
Examples:
  cargo build --release --workspace && target/release/bench
                                                the full run: a table of ratios to direct TCP
  bench --smoke --json                          a seconds-long run, JSON
  bench --transport plain --idle-tunnels 8000   memory per idle tunnel, without TLS

Exit status: 0 done; 1 a measurement failed (the error says which); 2 a bad command line.";

/// Benchmarks the tunnel against a direct TCP connection.
#[derive(Debug, Parser)]
#[command(name = "bench", version, after_help = HELP_EXAMPLES)]
struct Args {
    /// A seconds-long run with small sizes (for CI).
    #[arg(long)]
    smoke: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// MiB per bulk stream.
    #[arg(long)]
    bulk_mib: Option<u64>,
    /// Ping-pong round trips measured.
    #[arg(long)]
    rtt_samples: Option<usize>,
    /// Tunnels opened for the open-rate figure.
    #[arg(long)]
    tunnels: Option<usize>,
    /// Concurrent idle tunnels for the memory figure.
    #[arg(long)]
    idle_tunnels: Option<usize>,
    /// Only plain WebSockets (skip TLS), or only TLS.
    #[arg(long, value_parser = ["both", "plain", "tls"], default_value = "both")]
    transport: String,
    /// Leave out the peer tunnels (bore, rathole, wstunnel) even when they are installed
    /// (`--smoke` always does).
    #[arg(long)]
    no_peers: bool,
}

/// Sizes of one run.
#[derive(Debug, Clone, Copy)]
struct Plan {
    bulk: u64,
    rtt_samples: usize,
    tunnels: usize,
    idle: usize,
}

async fn connect(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

fn mib_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / elapsed.as_secs_f64()
}

async fn upload(addr: SocketAddr, bytes: u64) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut s = connect(addr).await?;
    s.write_u8(b'S').await?;
    let chunk = vec![0x5au8; 256 * 1024];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        s.write_all(&chunk[..n]).await?;
        left -= n as u64;
    }
    s.shutdown().await?;
    let got = s.read_u64().await?;
    ensure!(got == bytes, "sink counted {got} of {bytes} bytes");
    Ok(started.elapsed())
}

async fn download(addr: SocketAddr, bytes: u64) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut s = connect(addr).await?;
    s.write_u8(b'D').await?;
    s.write_u64(bytes).await?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    ensure!(got == bytes, "received {got} of {bytes} bytes");
    Ok(started.elapsed())
}

async fn parallel(addr: SocketAddr, streams: usize, bytes_each: u64) -> anyhow::Result<f64> {
    let started = Instant::now();
    let tasks: Vec<_> = (0..streams)
        .map(|_| tokio::spawn(upload(addr, bytes_each)))
        .collect();
    for t in tasks {
        t.await??;
    }
    Ok(mib_per_s(bytes_each * streams as u64, started.elapsed()))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn ping_pong(addr: SocketAddr, samples: usize) -> anyhow::Result<(f64, f64)> {
    let mut s = connect(addr).await?;
    s.write_u8(b'E').await?;
    let ping = [7u8; 64];
    let mut pong = [0u8; 64];
    let mut times = Vec::with_capacity(samples);
    for i in 0..samples + 50 {
        let t = Instant::now();
        s.write_all(&ping).await?;
        s.read_exact(&mut pong).await?;
        if i >= 50 {
            times.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    times.sort_by(f64::total_cmp);
    Ok((percentile(&times, 0.5), percentile(&times, 0.99)))
}

async fn open_one(addr: SocketAddr) -> anyhow::Result<(TcpStream, f64)> {
    let t = Instant::now();
    let mut s = connect(addr).await?;
    s.write_all(b"Ex").await?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await?;
    Ok((s, t.elapsed().as_secs_f64() * 1e3))
}

/// `total` tunnels opened by 16 concurrent openers: (p50 ms, p99 ms, tunnels/s, errors).
async fn open_rate(addr: SocketAddr, total: usize) -> (f64, f64, f64, usize) {
    let openers = 16;
    let started = Instant::now();
    let tasks: Vec<_> = (0..openers)
        .map(|i| {
            let n = total / openers + usize::from(i < total % openers);
            tokio::spawn(async move {
                let (mut times, mut errors) = (Vec::new(), 0);
                for _ in 0..n {
                    match open_one(addr).await {
                        Ok((_, ms)) => times.push(ms),
                        Err(_) => errors += 1,
                    }
                }
                (times, errors)
            })
        })
        .collect();
    let (mut times, mut errors) = (Vec::new(), 0);
    for t in tasks {
        if let Ok((t, e)) = t.await {
            times.extend(t);
            errors += e;
        }
    }
    let rate = times.len() as f64 / started.elapsed().as_secs_f64();
    times.sort_by(f64::total_cmp);
    (
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        rate,
        errors,
    )
}

/// `n` tunnels opened one after another (nothing else running): p50 of the set-up time, ms
/// (reported in µs).
async fn open_alone(addr: SocketAddr, n: usize) -> anyhow::Result<f64> {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let (s, ms) = open_one(addr).await?;
        drop(s);
        times.push(ms);
    }
    times.sort_by(f64::total_cmp);
    Ok(percentile(&times, 0.5))
}

/// Sends `bytes` of a pattern through the echo, half-closes, and reads until the far end
/// closes: the bytes lost (sent minus received). A byte out of place is an error.
async fn half_close_echo(addr: SocketAddr, bytes: u64) -> anyhow::Result<u64> {
    let mut s = connect(addr).await?;
    s.write_u8(b'E').await?;
    let (mut r, mut w) = s.into_split();
    let pattern = |i: u64| (i % 251) as u8;
    let writer = tokio::spawn(async move {
        let mut chunk = vec![0u8; 256 * 1024];
        let mut at = 0u64;
        while at < bytes {
            let n = (bytes - at).min(chunk.len() as u64) as usize;
            for (k, b) in chunk[..n].iter_mut().enumerate() {
                *b = pattern(at + k as u64);
            }
            w.write_all(&chunk[..n]).await?;
            at += n as u64;
        }
        w.shutdown().await?;
        anyhow::Ok(w)
    });
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        for (k, b) in buf[..n].iter().enumerate() {
            let i = got + k as u64;
            ensure!(
                *b == pattern(i),
                "byte {i} came back as {b}, not {}",
                pattern(i)
            );
        }
        got += n as u64;
    }
    let _w = writer.await??;
    ensure!(got <= bytes, "{got} bytes came back for {bytes} sent");
    Ok(bytes - got)
}

/// CPU time each of `pids` has used so far, ns.
fn cpu_each(pids: &[u32]) -> Vec<u64> {
    pids.iter()
        .map(|&p| hc_emulator::procs::cpu_ns(p))
        .collect()
}

/// µs of CPU each of `pids` used since `before` (from [`cpu_each`]), divided by `per`.
fn cpu_since(pids: &[u32], before: &[u64], per: f64) -> Vec<f64> {
    cpu_each(pids)
        .iter()
        .zip(before)
        .map(|(now, then)| now.saturating_sub(*then) as f64 / 1e3 / per)
        .collect()
}

/// Direct or chained figures for one address; `pids` are the tunnel's own processes, whose
/// CPU time is counted per MiB uploaded and per tunnel opened (none for direct TCP).
async fn measure(addr: SocketAddr, plan: Plan, pids: &[u32]) -> anyhow::Result<Value> {
    let bytes = plan.bulk * 1024 * 1024;
    let cpu = cpu_each(pids);
    let up = mib_per_s(bytes, upload(addr, bytes).await.context("upload")?);
    let cpu_per_mib: f64 = cpu_since(pids, &cpu, plan.bulk as f64).iter().sum();
    let down = mib_per_s(bytes, download(addr, bytes).await.context("download")?);
    let par = parallel(addr, 8, bytes / 8)
        .await
        .context("8 parallel uploads")?;
    let (rtt50, rtt99) = ping_pong(addr, plan.rtt_samples)
        .await
        .context("ping-pong")?;
    let cpu = cpu_each(pids);
    let (open50, open99, rate, errors) = open_rate(addr, plan.tunnels).await;
    let per_process = cpu_since(pids, &cpu, plan.tunnels as f64);
    let cpu_per_tunnel: f64 = per_process.iter().sum();
    let alone50 = open_alone(addr, plan.tunnels.min(500))
        .await
        .context("tunnels opened one at a time")?;
    let lost = half_close_echo(addr, bytes)
        .await
        .context("half-close echo")?;
    Ok(json!({
        "upload_mib_s": up, "download_mib_s": down, "parallel8_upload_mib_s": par,
        "rtt_p50_us": rtt50, "rtt_p99_us": rtt99,
        "open_alone_p50_us": alone50 * 1e3, "open_p50_ms": open50, "open_p99_ms": open99, "tunnels_per_s": rate, "open_errors": errors,
        "half_close_lost_bytes": lost,
        "cpu_us_per_mib": if pids.is_empty() { Value::Null } else { json!(cpu_per_mib) },
        "cpu_us_per_tunnel": if pids.is_empty() { Value::Null } else { json!(cpu_per_tunnel) },
        "cpu_us_per_tunnel_by_process": per_process,
    }))
}

/// Opens `n` idle tunnels and reports resident memory per tunnel of each process.
async fn idle_memory(chain: &Chain, n: usize) -> Value {
    let rss = |c: &Chain| {
        (
            c.relay.rss_kib(),
            c.hcm.as_ref().map(|h| h.rss_kib()).unwrap_or(0),
            c.shim.rss_kib(),
        )
    };
    let before = rss(chain);
    let addr = chain.forward;
    let mut open = Vec::with_capacity(n);
    let mut errors = 0;
    for batch in (0..n).collect::<Vec<_>>().chunks(64) {
        let tasks: Vec<_> = batch.iter().map(|_| tokio::spawn(open_one(addr))).collect();
        for t in tasks {
            match t.await {
                Ok(Ok((s, _))) => open.push(s),
                _ => errors += 1,
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss(chain);
    let per = |b: u64, a: u64| {
        if open.is_empty() {
            f64::NAN
        } else {
            a.saturating_sub(b) as f64 / open.len() as f64
        }
    };
    let result = json!({
        "tunnels": open.len(), "errors": errors,
        "relay_kib_per_tunnel": per(before.0, after.0), "hcm_kib_per_tunnel": per(before.1, after.1), "shim_kib_per_tunnel": per(before.2, after.2),
        "relay_rss_kib": after.0, "hcm_rss_kib": after.1, "shim_rss_kib": after.2,
    });
    drop(open);
    result
}

async fn chained(server: SocketAddr, plain: bool, plan: Plan) -> anyhow::Result<Value> {
    let chain = ChainBuilder::new(server.to_string())
        .plain(plain)
        .relay_args(["--max-connections-per-namespace", "100000"])
        .log("warn")
        .start()
        .await?;
    // In this order in `cpu_us_per_tunnel_by_process`: relay, shim, hcm.
    let mut pids = vec![chain.relay.pid(), chain.shim.pid()];
    pids.extend(chain.hcm.as_ref().map(|h| h.pid()));
    let mut figures = measure(chain.forward, plan, &pids).await?;
    figures["idle"] = idle_memory(&chain, plan.idle).await;
    Ok(figures)
}

fn ratio(chain: &Value, direct: &Value, key: &str) -> f64 {
    chain[key].as_f64().unwrap_or(f64::NAN) / direct[key].as_f64().unwrap_or(f64::NAN)
}

fn print_table(direct: &Value, runs: &[(String, Value)]) {
    let rows: [(&str, &str, &str); 13] = [
        ("upload, 1 stream", "upload_mib_s", "MiB/s"),
        ("download, 1 stream", "download_mib_s", "MiB/s"),
        ("upload, 8 streams", "parallel8_upload_mib_s", "MiB/s"),
        ("64 B ping-pong p50", "rtt_p50_us", "µs"),
        ("64 B ping-pong p99", "rtt_p99_us", "µs"),
        ("new tunnel alone p50", "open_alone_p50_us", "µs"),
        ("new tunnel p50, 16 openers", "open_p50_ms", "ms"),
        ("new tunnel p99, 16 openers", "open_p99_ms", "ms"),
        ("new tunnels, 16 openers", "tunnels_per_s", "/s"),
        ("open errors", "open_errors", ""),
        ("half-close echo, lost", "half_close_lost_bytes", "B"),
        ("tunnel CPU per MiB up", "cpu_us_per_mib", "µs"),
        ("tunnel CPU per new tunnel", "cpu_us_per_tunnel", "µs"),
    ];
    print!("{:<32}{:>12}", "", "direct TCP");
    for (name, _) in runs {
        print!("{:>16}{:>8}", name, "ratio");
    }
    println!();
    for (label, key, unit) in rows {
        // CPU rows count the tunnel's processes: direct TCP has none, so no ratio either.
        let base = direct[key].as_f64();
        print!(
            "{:<32}{:>12}",
            format!("{label} ({unit})"),
            base.map_or("-".into(), |b| format!("{b:.1}"))
        );
        for (_, v) in runs {
            print!(
                "{:>16}{:>8}",
                format!("{:.1}", v[key].as_f64().unwrap_or(f64::NAN)),
                base.map_or(String::new(), |_| format!("{:.2}", ratio(v, direct, key)))
            );
        }
        println!();
    }
    for (name, v) in runs {
        let added = v["rtt_p50_us"].as_f64().unwrap_or(f64::NAN)
            - direct["rtt_p50_us"].as_f64().unwrap_or(f64::NAN);
        let i = &v["idle"];
        if i.is_null() {
            println!("{name}: added ping-pong p50 {added:.0} µs");
            continue;
        }
        println!(
            "{name}: added ping-pong p50 {added:.0} µs; {} idle tunnels ({} errors): relay {:.1} KiB, hcm {:.1} KiB, shim {:.1} KiB per tunnel (RSS relay {} KiB, hcm {} KiB, shim {} KiB)",
            i["tunnels"],
            i["errors"],
            i["relay_kib_per_tunnel"].as_f64().unwrap_or(f64::NAN),
            i["hcm_kib_per_tunnel"].as_f64().unwrap_or(f64::NAN),
            i["shim_kib_per_tunnel"].as_f64().unwrap_or(f64::NAN),
            i["relay_rss_kib"],
            i["hcm_rss_kib"],
            i["shim_rss_kib"]
        );
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    hc_process::exit_status(run(Args::parse()).await)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let limit = hc_process::raise_fd_limit();
    eprintln!("open file limit: {limit}");
    let d = if args.smoke {
        Plan {
            bulk: 4,
            rtt_samples: 200,
            tunnels: 50,
            idle: 100,
        }
    } else {
        Plan {
            bulk: 256,
            rtt_samples: 5000,
            tunnels: 2000,
            idle: 8000,
        }
    };
    let plan = Plan {
        bulk: args.bulk_mib.unwrap_or(d.bulk).max(1),
        rtt_samples: args.rtt_samples.unwrap_or(d.rtt_samples).max(1),
        tunnels: args.tunnels.unwrap_or(d.tunnels).max(16),
        idle: args.idle_tunnels.unwrap_or(d.idle),
    };
    let server = servers::bench_server().await?;
    let direct = measure(server, plan, &[]).await.context("direct TCP")?;
    let mut runs = Vec::new();
    let mut peers = Vec::new();
    if !args.smoke && !args.no_peers {
        for name in hc_emulator::peers::NAMES {
            match hc_emulator::peers::start(name, server).await {
                Ok(Some(peer)) => {
                    let v = measure(peer.addr, plan, &peer.pids())
                        .await
                        .with_context(|| format!("peer {name}"))?;
                    drop(peer);
                    peers.push((name.to_owned(), v));
                }
                Ok(None) => eprintln!("{name}: not installed, left out"),
                Err(e) => eprintln!("{name}: left out: {e:#}"),
            }
        }
    }
    for (name, plain) in [("plain ws", true), ("TLS", false)] {
        if args.transport == "both"
            || (plain && args.transport == "plain")
            || (!plain && args.transport == "tls")
        {
            let v = chained(server, plain, plan)
                .await
                .with_context(|| format!("chain with {name}"))?;
            runs.push((name.to_owned(), v));
        }
    }
    if args.json {
        let mut out = json!({"plan": {"bulk_mib": plan.bulk, "rtt_samples": plan.rtt_samples, "tunnels": plan.tunnels, "idle_tunnels": plan.idle}, "direct": direct, "peers": {}});
        let with_ratios = |v: &Value| {
            let mut v = v.clone();
            for key in [
                "upload_mib_s",
                "download_mib_s",
                "parallel8_upload_mib_s",
                "rtt_p50_us",
                "rtt_p99_us",
                "open_alone_p50_us",
                "open_p50_ms",
                "tunnels_per_s",
            ] {
                v[format!("{key}_ratio")] = json!(ratio(&v, &direct, key));
            }
            v
        };
        for (name, v) in &runs {
            out[if name == "TLS" { "tls" } else { "plain" }] = with_ratios(v);
        }
        for (name, v) in &peers {
            out["peers"][name] = with_ratios(v);
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        let profile = if cfg!(debug_assertions) {
            "DEBUG build: figures are not representative"
        } else {
            "release build"
        };
        println!(
            "bulk {} MiB per stream, {} round trips, {} tunnels, {} idle tunnels; {profile}",
            plan.bulk, plan.rtt_samples, plan.tunnels, plan.idle
        );
        runs.extend(peers);
        print_table(&direct, &runs);
    }
    Ok(())
}
