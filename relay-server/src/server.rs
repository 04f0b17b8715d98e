//! Accepting connections: TCP (TCP_NODELAY), optional TLS with a handshake timeout, then
//! HTTP/1.1 with upgrades, a header read timeout and a cap on the request head size. Each
//! connection and each upgraded socket runs as a task of the relay's `TaskTracker`; shutdown
//! cancels one token, stops accepting, and waits for the tasks under a grace period.

use std::future::Future;
use std::sync::Arc;

use hc_protocol::limits::MAX_HANDSHAKE_BYTES;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt as _;
use tracing::{debug, info, warn};

use crate::head_case::{CaptureIo, HeadCapture};
use crate::http::ConnInfo;
use crate::routes;
use crate::state::RelayState;

/// Serves until `shutdown` completes, then drains.
pub(crate) async fn serve(
    state: Arc<RelayState>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let cancel = state.cancel.clone();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = shutdown => trigger.cancel(),
            _ = trigger.cancelled() => {}
        }
    });
    if let Ok(addr) = listener.local_addr() {
        state
            .data_port
            .store(addr.port(), std::sync::atomic::Ordering::Relaxed);
    }
    let router = routes::router(state.clone());
    let tls = state.tls.clone();
    accept_loop(&state, listener, router, tls).await;
    info!("shutting down: no new connections; closing listeners and tunnels");
    state.tracker.close();
    if tokio::time::timeout(state.options.shutdown_grace, state.tracker.wait())
        .await
        .is_err()
    {
        warn!(
            remaining = state.tracker.len(),
            "shutdown grace period over; dropping remaining connections"
        );
    }
    Ok(())
}

/// Serves the ARM endpoint over HTTPS until the relay shuts down (its connections are
/// tracked with the relay's, so `serve`'s drain waits for them too).
pub(crate) async fn serve_management(
    state: Arc<RelayState>,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
) -> std::io::Result<()> {
    let router = crate::arm::router(state.clone());
    accept_loop(&state, listener, router, Some(tls)).await;
    Ok(())
}

/// Accepts connections until the relay is cancelled; each is served (TLS when `tls`) by
/// `router` as a tracked task.
async fn accept_loop(
    state: &Arc<RelayState>,
    listener: TcpListener,
    router: axum::Router,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let (state2, router, tls) = (state.clone(), router.clone(), tls.clone());
                    state.tracker.spawn(serve_connection(state2, router, tls, stream, peer));
                }
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = state.cancel.cancelled() => break,
        }
    }
}

async fn serve_connection(
    state: Arc<RelayState>,
    router: axum::Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    stream: TcpStream,
    peer: std::net::SocketAddr,
) {
    let _ = stream.set_nodelay(true);
    let capture = Arc::new(HeadCapture::default());
    let conn = |tls| ConnInfo {
        peer,
        tls,
        slot: Default::default(),
        capture: capture.clone(),
    };
    match tls {
        Some(tls) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls);
            match tokio::time::timeout(state.options.handshake_timeout, acceptor.accept(stream))
                .await
            {
                Ok(Ok(tls_stream)) => {
                    let resumed = tls_stream.get_ref().1.handshake_kind()
                        == Some(rustls::HandshakeKind::Resumed);
                    state.telemetry.tls_handshake(resumed);
                    serve_http(
                        state,
                        router,
                        CaptureIo::new(tls_stream, capture.clone()),
                        conn(true),
                    )
                    .await
                }
                Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => debug!(%peer, "TLS handshake timed out"),
            }
        }
        None => {
            serve_http(
                state,
                router,
                CaptureIo::new(stream, capture.clone()),
                conn(false),
            )
            .await
        }
    }
}

/// Serves one plain (no TLS) HTTP/1.1 connection over any byte stream: an in-memory pipe in
/// component tests, where time can be paused and no socket is involved.
pub(crate) async fn serve_io<IO>(state: Arc<RelayState>, io: IO, peer: std::net::SocketAddr)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let capture = Arc::new(HeadCapture::default());
    let conn = ConnInfo {
        peer,
        tls: false,
        slot: Default::default(),
        capture: capture.clone(),
    };
    let router = routes::router(state.clone());
    serve_http(state, router, CaptureIo::new(io, capture), conn).await
}

async fn serve_http<IO>(state: Arc<RelayState>, router: axum::Router, io: IO, conn: ConnInfo)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = conn.peer;
    let service =
        hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(conn.clone());
            router.clone().oneshot(req)
        });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(state.options.handshake_timeout)
        .max_buf_size(MAX_HANDSHAKE_BYTES)
        .max_headers(100);
    let connection = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        r = connection.as_mut() => if let Err(e) = r { debug!(%peer, error = %e, "http connection ended with an error") },
        _ = state.cancel.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}
