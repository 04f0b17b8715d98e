//! `tcpping host:port`, like the one in App Service's console but honest: it opens a real
//! tunnel through the relay and the Hybrid Connection Manager to the endpoint (the HCM dials
//! the endpoint before it joins the rendezvous, so success means every hop answered) and
//! reports the time, or which hop failed.

use std::time::{Duration, Instant};

use hc_client::Error;
use hc_protocol::frame::CloseFrame;

use crate::config::Target;

/// Which hop failed, in words a user can act on.
pub fn explain(target: &Target, e: &Error) -> String {
    let hc = target.describe();
    if e.is_network() {
        format!("relay unreachable: {e}")
    } else if e.is_unauthorized() {
        format!("unauthorized: the relay refused the send key for {hc}: {e}")
    } else if e.is_quota_exceeded() {
        format!("quota exceeded: the relay has no room for another connection now: {e}")
    } else if e.is_endpoint_not_found() {
        format!("hybrid connection does not exist: {e}")
    } else if e.is_no_listener() {
        format!("no listener: no Hybrid Connection Manager is connected for {hc}: {e}")
    } else if e.status() == Some(502) {
        format!(
            "endpoint refused: the Hybrid Connection Manager could not connect to {}: {e}",
            target.endpoint()
        )
    } else if e.is_rejected() {
        format!("rejected by the listener: {e}")
    } else if e.is_timeout() {
        format!("timed out: {e}")
    } else {
        format!("failed: {e}")
    }
}

/// Pings `count` times, `interval` apart; prints a line per attempt and a summary. Returns
/// whether every attempt succeeded.
pub async fn run(target: &Target, count: u32, interval: Duration) -> bool {
    let mut times = Vec::new();
    let mut failures = 0;
    for i in 0..count {
        if i > 0 {
            tokio::time::sleep(interval).await;
        }
        let started = Instant::now();
        match target.hc.connect_ws().await {
            Ok(ws) => {
                let ms = started.elapsed().as_secs_f64() * 1000.0;
                times.push(ms);
                println!(
                    "Connected to {} through hybrid connection {}: time={ms:.1} ms",
                    target.endpoint(),
                    target.describe()
                );
                let (_reader, mut writer) =
                    hc_ws::split(ws.io, hc_ws::Config::new(hc_ws::Role::Client));
                let _ = writer.close(&CloseFrame::new(1000, "tcpping")).await;
            }
            Err(e) => {
                failures += 1;
                println!("{}: {}", target.endpoint(), explain(target, &e));
            }
        }
    }
    let ok = times.len();
    let tunnels = if count == 1 { "tunnel" } else { "tunnels" };
    print!("{count} {tunnels}: {ok} succeeded, {failures} failed");
    if ok > 0 {
        let min = times.iter().copied().fold(f64::INFINITY, f64::min);
        let max = times.iter().copied().fold(0.0, f64::max);
        let avg = times.iter().sum::<f64>() / ok as f64;
        print!("; round trip min/avg/max = {min:.1}/{avg:.1}/{max:.1} ms");
    }
    println!();
    failures == 0
}
