//! Local listeners whose connections flow through a hybrid connection: explicit
//! (`--forward 127.0.0.1:15432=db`) and hostname mode (one loopback address per endpoint
//! host name, on the endpoint's port). One log line per tunnel; keys never logged.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::Target;
use crate::proxy::{Limits, accept_loop};

/// Tunnels one accepted connection; a failed connect resets the client's connection. `_slot`
/// counts it against the shim's connection cap while it lives.
pub async fn tunnel(
    tcp: TcpStream,
    target: Arc<Target>,
    peer: SocketAddr,
    _slot: OwnedSemaphorePermit,
) {
    match target.hc.connect_ws().await {
        Ok(ws) => bridge_logged(ws, tcp, Vec::new(), &target, peer).await,
        Err(e) => {
            crate::metrics::metrics().connect_failed(&target.describe());
            warn!(endpoint = %target.endpoint(), hybrid_connection = %target.describe(), %peer, error = %e, "cannot open a tunnel");
            let _ = tcp.set_zero_linger();
        }
    }
}

/// Bridges an open tunnel and writes its one log line (bytes each way, duration, outcome).
/// `early` holds bytes the client sent before the tunnel was open; they go first.
pub async fn bridge_logged(
    ws: hc_client::handshake::WsStream,
    tcp: TcpStream,
    early: Vec<u8>,
    target: &Target,
    peer: SocketAddr,
) {
    let started = std::time::Instant::now();
    let hc = target.describe();
    crate::metrics::metrics().opened(&hc);
    let report = hc_client::bridge::bridge_with_early(ws, tcp, &early, 64 * 1024).await;
    crate::metrics::metrics().ended(
        &hc,
        report.from_tcp,
        report.to_tcp,
        report.aborted.is_some(),
    );
    info!(
        endpoint = %target.endpoint(),
        hybrid_connection = %target.describe(),
        %peer,
        to_endpoint = report.from_tcp,
        from_endpoint = report.to_tcp,
        duration_ms = started.elapsed().as_millis() as u64,
        outcome = report.aborted.as_deref().unwrap_or("closed"),
        "tunnel"
    );
}

/// Accepts on `listener` until `cancel`, tunnelling each connection to whatever hybrid
/// connection `router` has for `host:port` at that moment (`--app` with `--forward`); a
/// connection to an endpoint the app does not have (any more) is closed, with a warning.
pub async fn serve_routed(
    listener: TcpListener,
    router: Arc<crate::proxy::Router>,
    host: String,
    port: u16,
    limits: Limits,
    tracker: TaskTracker,
    cancel: CancellationToken,
) {
    accept_loop(listener, limits, tracker, cancel, move |tcp, peer, slot| {
        let decision = router.decide(&host, port);
        let endpoint = format!("{host}:{port}");
        async move {
            match decision {
                crate::proxy::Decision::Tunnel(target) => tunnel(tcp, target, peer, slot).await,
                crate::proxy::Decision::Refuse(why) => {
                    warn!(%peer, reason = %why, "connection closed");
                    let _ = tcp.set_zero_linger();
                }
                crate::proxy::Decision::Direct => {
                    warn!(%peer, "{endpoint} is not an endpoint of the app; connection closed");
                }
            }
        }
    })
    .await
}

/// Accepts on `listener` until `cancel`, tunnelling each connection to `target`.
pub async fn serve(
    listener: TcpListener,
    target: Arc<Target>,
    limits: Limits,
    tracker: TaskTracker,
    cancel: CancellationToken,
) {
    accept_loop(listener, limits, tracker, cancel, move |tcp, peer, slot| {
        tunnel(tcp, target.clone(), peer, slot)
    })
    .await
}

/// The loopback address hostname mode gives the `index`-th distinct host name:
/// 127.77.0.1, 127.77.0.2, … (all of 127.0.0.0/8 is loopback on Linux).
pub fn loopback_for(index: usize) -> Ipv4Addr {
    let n = index as u32 + 1;
    Ipv4Addr::new(127, 77, (n >> 8) as u8, (n & 0xff) as u8)
}

/// Hostname mode's plan: one address per distinct host name, one listener per endpoint.
pub fn hostname_plan(targets: &[Arc<Target>]) -> Vec<(IpAddr, Arc<Target>)> {
    let mut names: Vec<&str> = Vec::new();
    targets
        .iter()
        .map(|t| {
            let i = names
                .iter()
                .position(|n| *n == t.hostname)
                .unwrap_or_else(|| {
                    names.push(&t.hostname);
                    names.len() - 1
                });
            (IpAddr::V4(loopback_for(i)), t.clone())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_addresses() {
        assert_eq!(loopback_for(0), Ipv4Addr::new(127, 77, 0, 1));
        assert_eq!(loopback_for(255), Ipv4Addr::new(127, 77, 1, 0));
    }
}
