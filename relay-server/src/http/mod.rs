//! HTTP request mode (PROTOCOL.md §8, §5.2–§5.3, §15 MUST 6, 7, 11): plain HTTP(S) requests
//! to `/{hybrid connection}/...` are carried to a listener and its answer back.
//!
//! Small requests (body complete and ≤ 64 KiB, headers ≤ 32 KiB) go as a full `request` on
//! the control channel, followed at once by the body as one binary message. Others send the
//! address-only `request`; the listener opens the rendezvous (`sb-hc-action=request`) and the
//! relay sends the full request and streams the body there. A response may come on the
//! control channel or on a rendezvous the listener opens for it; the relay never resends a
//! request it delivered on the control channel. A rendezvous stays attached to the client's
//! TCP connection and carries that connection's later requests (§8.1 step 2).
//!
//! The client's handler drives it all: it registers a [`PendingHttp`], and gets back either a
//! response from the control channel or the rendezvous socket ([`Delivery`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::response::Response;
use futures_util::StreamExt as _;
use hc_protocol::address::{self, Action};
use hc_protocol::control::{
    self, Headers, RemoteEndpoint, RequestCommand, RequestHead, ResponseCommand, ServiceCommand,
};
use hc_protocol::limits::{MAX_CONTROL_BODY_BYTES, MAX_CONTROL_HEADER_BYTES};
use hc_protocol::{Right, tracking};
use http::{HeaderName, HeaderValue, Method, StatusCode, header};
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use crate::error::{ErrorFormat, RelayError, Tracking};
use crate::fault::HttpFault;
use crate::head_case::HeaderNames;
use crate::registry::{ControlOut, Delivery, PendingHttp};
use crate::state::RelayState;
use crate::target::{Target, TokenSource, find_token};

mod channel;

pub(crate) use channel::RequestChannel;

/// Headers never passed on (hop-by-hop, framing, the token carriers).
const STRIPPED_REQUEST: [&str; 10] = [
    "connection",
    "content-length",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "close",
    "keep-alive",
    "proxy-connection",
    "expect",
];
const STRIPPED_RESPONSE: [&str; 8] = [
    "connection",
    "content-length",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "keep-alive",
    "proxy-connection",
];

/// Facts about the TCP connection a request came on, added by the server.
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    /// The peer's address.
    pub peer: std::net::SocketAddr,
    /// Whether TLS is in use.
    pub tls: bool,
    /// The listener's rendezvous kept for this connection's next requests (§8.1 step 2).
    pub slot: ChannelSlot,
    /// The connection's recent input, for header names as the client spelled them.
    pub capture: Arc<crate::head_case::HeadCapture>,
}

/// The rendezvous kept for a client TCP connection, reused by its next requests.
pub(crate) type ChannelSlot = Arc<std::sync::Mutex<Option<RequestChannel>>>;

/// Serves `sb-hc-action=request`: hands the socket to the waiting request.
pub(crate) fn rendezvous(
    state: &Arc<RelayState>,
    id: &str,
    target: &Target,
    upgrade: hyper::upgrade::OnUpgrade,
) -> Result<(), RelayError> {
    // Keyed by this hybrid connection: another one's request id is unknown here.
    let pending = state
        .registry
        .take_http_if(&target.key, id, |_| true)
        .ok_or(RelayError::RendezvousExpired)?;
    let (buffer, limit, hc) = (
        state.options.tunnel_buffer_size,
        state.options.http_response_timeout,
        target.key.clone(),
    );
    state.tracker.spawn(async move {
        match upgrade.await {
            Ok(io) => {
                if let Err(Delivery::Rendezvous(io)) = pending.reply.send(Delivery::Rendezvous(io))
                {
                    RequestChannel::new(io, hc, buffer, limit).close().await;
                }
            }
            Err(e) => {
                let _ = pending.reply.send(Delivery::Failed(format!(
                    "the listener's rendezvous failed: {e}"
                )));
            }
        }
    });
    Ok(())
}

/// Serves one HTTP-mode request.
pub(crate) async fn handle(
    state: Arc<RelayState>,
    req: Request,
    conn: ConnInfo,
    host: String,
    hc_path: String,
    query: String,
    names: HeaderNames,
) -> Response {
    let now = state.options.clock.unix_now();
    let client_id = address::query_value(&query, address::QUERY_ID);
    let id = tracking::tracking_id(client_id.as_deref(), || {
        tracking::guid_from_bytes(rand::random())
    });
    let ns_host = crate::model::host_without_port(&host);
    let tracking = Tracking {
        id: id.clone(),
        system_tracker: format!("{ns_host}:{hc_path}"),
        now,
    };
    let (parts, body) = req.into_parts();
    let mut body = Some(body);
    let call = Call {
        state: &state,
        parts: &parts,
        conn: &conn,
        host: &host,
        hc_path: &hc_path,
        query: &query,
        id: &id,
        names: &names,
        key: Default::default(),
        path: AtomicU8::new(PATH_RELAY),
    };
    let result = call.serve(&mut body).await;
    let key = crate::telemetry::key_or_namespace(call.key.get().cloned(), &state.store, &host);
    let key = key.as_ref();
    let path = ["relay", "control_channel", "rendezvous"]
        [usize::from(call.path.load(Ordering::Relaxed)).min(2)];
    match result {
        Ok(r) => {
            state
                .telemetry
                .http_answered(key, r.status().as_u16(), path);
            r
        }
        Err(e) => {
            debug!(tracking_id = %id, status = e.status(), error = %e, "http request refused");
            state.telemetry.http_answered(key, e.status(), path);
            state.telemetry.refused(
                crate::telemetry::Stage::Http,
                key,
                &e,
                &host,
                &hc_path,
                conn.peer,
                &id,
                now,
            );
            if let Some(body) = body {
                drain_unread(&parts, body).await;
            }
            e.render(&tracking, ErrorFormat::Json)
        }
    }
}

/// How an HTTP-mode answer reached the client: the relay's own, or the listener's by way of
/// its control channel or a rendezvous.
const PATH_RELAY: u8 = 0;
const PATH_CONTROL: u8 = 1;
const PATH_RENDEZVOUS: u8 = 2;

/// At most this much of an unread request body is read and dropped before an early refusal
/// is sent, so a client that writes its whole body before reading sees the refusal rather
/// than a connection reset; a larger or slower body still gets the refusal, then the close.
const DRAIN_LIMIT: usize = 1024 * 1024;
/// Time allowed for that.
const DRAIN_TIME: Duration = Duration::from_secs(2);

/// Reads and drops what the client is sending of a body nobody will use (not when the client
/// waits for `100 Continue`: it has sent nothing and should not be invited to).
pub(crate) async fn drain_unread(parts: &http::request::Parts, body: Body) {
    let expects_continue = parts
        .headers
        .get(header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("100-continue"));
    if expects_continue {
        return;
    }
    let mut stream = body.into_data_stream();
    let mut seen = 0usize;
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        while seen <= DRAIN_LIMIT {
            match stream.next().await {
                Some(Ok(chunk)) => seen += chunk.len(),
                _ => break,
            }
        }
    })
    .await;
}

/// One HTTP-mode request on its way through the relay.
struct Call<'a> {
    state: &'a Arc<RelayState>,
    parts: &'a http::request::Parts,
    conn: &'a ConnInfo,
    host: &'a str,
    hc_path: &'a str,
    query: &'a str,
    id: &'a str,
    names: &'a HeaderNames,
    /// The hybrid connection, once resolved (metric labels).
    key: std::sync::OnceLock<crate::registry::HcKey>,
    /// Which way the answer came ([`PATH_RELAY`] until the listener answers).
    path: AtomicU8,
}

impl Call<'_> {
    /// Refusals that need no body come first and leave `body` in place (the caller drains
    /// it); from the first use of the body on, it is taken.
    async fn serve(&self, body: &mut Option<Body>) -> Result<Response, RelayError> {
        let (state, parts, conn, id) = (self.state, self.parts, self.conn, self.id);
        if parts.method == Method::CONNECT {
            return Err(RelayError::BadRequest(
                "CONNECT is not supported on hybrid connection HTTP endpoints.".into(),
            ));
        }
        if parts.headers.contains_key(header::UPGRADE) {
            return Err(RelayError::BadRequest(
                "Protocol upgrades are not allowed here; WebSocket connections use /$hc/{path}."
                    .into(),
            ));
        }
        let target = Target::resolve(&state.store.read(), self.host, self.hc_path)?;
        let _ = self.key.set(target.key.clone());
        let _in_flight = state
            .telemetry
            .http_started(crate::telemetry::HttpInFlight {
                tracking_id: id.to_owned(),
                namespace: target.key.0.clone(),
                hybrid_connection: target.key.1.clone(),
                method: parts.method.to_string(),
                client: conn.peer.to_string(),
                since: state.options.clock.unix_now(),
            });
        let token = find_token(&parts.headers, self.query);
        let mut strip_authorization = false;
        if target.requires_client_authorization {
            target.authorize(
                token.as_ref().map(|t| t.0.as_str()),
                Right::Send,
                state.options.clock.unix_now(),
            )?;
            strip_authorization = token
                .as_ref()
                .is_some_and(|t| t.1 == TokenSource::Authorization);
        }
        match state.faults.http(&target.key) {
            Some(HttpFault::Status(status, text)) => {
                return Err(RelayError::Injected { status, text });
            }
            Some(HttpFault::Timeout) => {
                tokio::select! {
                    _ = tokio::time::sleep(state.options.http_response_timeout) => {}
                    _ = state.cancel.cancelled() => return Err(RelayError::ShuttingDown),
                }
                return Err(RelayError::HttpTimeout);
            }
            None => {}
        }
        let ns_host = crate::model::host_without_port(self.host);
        let head = request_head(parts, self.names, id, conn, self.query, strip_authorization);
        let (has_body, length) = body_kind(parts);
        let deadline = state.options.http_response_timeout;
        let reused = conn
            .slot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .filter(|c| c.hc == target.key);
        if let Some(channel) = reused {
            // Reuse only when the body can be kept: the listener may have closed the rendezvous
            // after its last response (.NET does), and then the request goes the normal way.
            let small = !has_body || length.is_some_and(|l| l as usize <= MAX_CONTROL_BODY_BYTES);
            if small {
                let taken = body.take().unwrap_or_default();
                let (collected, rest) = if has_body {
                    collect_small(taken, state.options.small_body_wait).await
                } else {
                    (Some(Vec::new()), Body::empty())
                };
                *body = Some(rest);
                if let Some(bytes) = collected {
                    let json = control::to_json(&ServiceCommand::Request(RequestCommand::full(
                        String::new(),
                        head.clone(),
                        has_body,
                    )));
                    match try_channel(channel, &json, has_body.then(|| bytes.clone()), deadline)
                        .await?
                    {
                        Ok((channel, response)) => {
                            self.path.store(PATH_RENDEZVOUS, Ordering::Relaxed);
                            return finish_on_channel(
                                state, channel, response, conn, &ns_host, deadline,
                            );
                        }
                        Err(why) => {
                            debug!(request_id = %id, %why, "the kept rendezvous is gone; sending the request the normal way")
                        }
                    }
                    *body = Some(if has_body {
                        Body::from(bytes)
                    } else {
                        Body::empty()
                    });
                }
            }
        }
        let no_listener = RelayError::NoListenersHttp(state.options.http_no_listener_status);
        let listener = state
            .registry
            .pick_listener(&target.key)
            .ok_or_else(|| no_listener.clone())?;
        let address = address::rendezvous_address(
            &listener.base_url,
            &target.hc_name,
            "",
            Action::Request,
            id,
        );
        let (reply_tx, reply_rx) = oneshot::channel();
        let pending = PendingHttp {
            listener: listener.id,
            reply: reply_tx,
        };
        let _guard = state.registry.insert_http(
            &target.key,
            id,
            pending,
            state.options.max_pending_rendezvous,
        )?;
        let headers_small = serde_json::to_string(&head.request_headers)
            .map(|j| j.len())
            .unwrap_or(usize::MAX)
            <= MAX_CONTROL_HEADER_BYTES;
        let taken = body.take().unwrap_or_default();
        let (small_body, rest) = match (has_body, length) {
            (false, _) => (Some(Vec::new()), taken),
            (true, Some(l)) if l as usize <= MAX_CONTROL_BODY_BYTES && headers_small => {
                collect_small(taken, state.options.small_body_wait).await
            }
            _ => (None, taken),
        };
        // The listener's time starts now, before the command waits for room in its queue: a
        // listener that stopped reading cannot hold the client longer than the deadline.
        let until = tokio::time::Instant::now() + deadline;
        let (out, later) = match small_body {
            Some(bytes) => {
                let json = control::to_json(&ServiceCommand::Request(RequestCommand::full(
                    address, head, has_body,
                )));
                (
                    ControlOut::Request {
                        id: id.to_owned(),
                        json,
                        body: has_body.then_some(bytes),
                    },
                    None,
                )
            }
            None => {
                let json = control::to_json(&ServiceCommand::Request(
                    RequestCommand::rendezvous_only(address.clone(), id.to_owned()),
                ));
                (
                    ControlOut::Text(json),
                    Some((
                        RequestCommand::full(address, head, has_body),
                        has_body.then_some(rest),
                    )),
                )
            }
        };
        let delivery = tokio::select! {
            d = tokio::time::timeout_at(until, async {
                listener.tx.send(out).await.map_err(|_| no_listener.clone())?;
                Ok::<_, RelayError>(reply_rx.await.unwrap_or_else(|_| Delivery::Failed("the listener went away".into())))
            }) => match d {
                Ok(d) => d?,
                Err(_) => return Err(RelayError::HttpTimeout),
            },
            _ = state.cancel.cancelled() => return Err(RelayError::ShuttingDown),
        };
        match delivery {
            Delivery::Control(response, body) => {
                self.path.store(PATH_CONTROL, Ordering::Relaxed);
                build_response(response, body.map(Body::from), &ns_host)
            }
            Delivery::Failed(why) => Err(RelayError::Rejected {
                status: 502,
                description: why,
            }),
            Delivery::Rendezvous(io) => {
                self.path.store(PATH_RENDEZVOUS, Ordering::Relaxed);
                let mut channel = RequestChannel::new(
                    io,
                    target.key.clone(),
                    state.options.tunnel_buffer_size,
                    deadline,
                );
                if let Some((command, body)) = later {
                    let json = control::to_json(&ServiceCommand::Request(command));
                    channel.send_request(&json, body, deadline).await?;
                }
                respond_on_channel(state, channel, conn, &ns_host, deadline).await
            }
        }
    }
}

/// The `request` head: target with the filtered query, headers without hop-by-hop and token
/// carriers, names as the client spelled them, multi-valued ones joined (§5.2).
fn request_head(
    parts: &http::request::Parts,
    names: &HeaderNames,
    id: &str,
    conn: &ConnInfo,
    query: &str,
    strip_authorization: bool,
) -> RequestHead {
    let app_query = address::app_query(query);
    let path = parts.uri.path();
    let target = if app_query.trim_matches('&').is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{app_query}")
    };
    let mut headers = Headers::default();
    for (name, value) in &parts.headers {
        let n = name.as_str();
        if STRIPPED_REQUEST.contains(&n)
            || n.eq_ignore_ascii_case(address::HEADER_SB_AUTHORIZATION)
            || (strip_authorization && n == "authorization")
        {
            continue;
        }
        headers.append(&names.spell(n), &String::from_utf8_lossy(value.as_bytes()));
    }
    RequestHead {
        id: id.to_owned(),
        request_target: target,
        method: parts.method.as_str().to_owned(),
        remote_endpoint: RemoteEndpoint {
            address: conn.peer.ip().to_canonical().to_string(),
            port: conn.peer.port(),
        },
        request_headers: headers,
    }
}

/// Whether the request has a body, and its length when known.
fn body_kind(parts: &http::request::Parts) -> (bool, Option<u64>) {
    let length = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let chunked = parts.headers.contains_key(header::TRANSFER_ENCODING);
    (
        chunked || length.is_some_and(|l| l > 0),
        if chunked { None } else { length },
    )
}

/// Reads a small body whole. When it does not arrive within `wait`, the request goes by
/// rendezvous with what arrived so far followed by the rest.
async fn collect_small(body: Body, wait: Duration) -> (Option<Vec<u8>>, Body) {
    let mut stream = body.into_data_stream();
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(chunk))) => got.extend_from_slice(&chunk),
            Ok(None) => return (Some(got), Body::empty()),
            Ok(Some(Err(_))) => return (None, Body::from(got)),
            Err(_) => {
                let prefix = futures_util::stream::once(async move {
                    Ok::<Bytes, axum::Error>(Bytes::from(got))
                });
                return (None, Body::from_stream(prefix.chain(stream)));
            }
        }
    }
}

/// Sends a request on a kept rendezvous and reads the response head. `Ok(Err(why))` means the
/// socket is gone (the listener closed it), so the request may go the normal way; a listener
/// that is only slow gets the usual 504, never a second copy of the request.
async fn try_channel(
    mut channel: RequestChannel,
    json: &str,
    body: Option<Vec<u8>>,
    deadline: Duration,
) -> Result<Result<(RequestChannel, ResponseCommand), String>, RelayError> {
    if let Err(e) = channel
        .send_request(json, body.map(Body::from), deadline)
        .await
    {
        return Ok(Err(e.to_string()));
    }
    match tokio::time::timeout(deadline, channel.read_response()).await {
        Ok(Ok(response)) => Ok(Ok((channel, response))),
        Ok(Err(why)) => Ok(Err(why)),
        Err(_) => Err(RelayError::HttpTimeout),
    }
}

/// Reads the response head from `channel` and streams its body.
async fn respond_on_channel(
    state: &Arc<RelayState>,
    mut channel: RequestChannel,
    conn: &ConnInfo,
    ns_host: &str,
    deadline: Duration,
) -> Result<Response, RelayError> {
    let response = match tokio::time::timeout(deadline, channel.read_response()).await {
        Ok(Ok(r)) => r,
        Ok(Err(why)) => {
            return Err(RelayError::Rejected {
                status: 502,
                description: why,
            });
        }
        Err(_) => return Err(RelayError::HttpTimeout),
    };
    finish_on_channel(state, channel, response, conn, ns_host, deadline)
}

/// The response for a head read from `channel`: its body streams from the channel, which goes
/// back to the client connection's slot when the body ended cleanly. A head with a status
/// the client must not see is answered with 502 and the channel closed.
fn finish_on_channel(
    state: &Arc<RelayState>,
    mut channel: RequestChannel,
    response: ResponseCommand,
    conn: &ConnInfo,
    ns_host: &str,
    deadline: Duration,
) -> Result<Response, RelayError> {
    if let Err(e) = check_status(&response) {
        state.tracker.spawn(channel.close());
        return Err(e);
    }
    if !response.body {
        conn.slot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(channel);
        return build_response(response, None, ns_host);
    }
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(8);
    let slot = conn.slot.clone();
    state.tracker.spawn(async move {
        if channel.stream_body(&tx, deadline).await {
            slot.lock()
                .unwrap_or_else(|p| p.into_inner())
                .replace(channel);
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    build_response(response, Some(Body::from_stream(stream)), ns_host)
}

/// A listener's status must be a final one (200..=599): an informational status such as
/// `101 Switching Protocols` would change what the client's connection is, and anything else
/// is not HTTP. Either is answered with 502 at once.
fn check_status(r: &ResponseCommand) -> Result<(), RelayError> {
    if (200..=599).contains(&r.status_code) {
        return Ok(());
    }
    Err(RelayError::Rejected {
        status: 502,
        description: format!(
            "The listener answered with status {}, which is not a final HTTP status.",
            r.status_code
        ),
    })
}

/// The client's response: the listener's status and reason phrase exactly, its headers minus
/// hop-by-hop ones, `Via: 1.1 {namespace host}` (§8.2).
fn build_response(
    r: ResponseCommand,
    body: Option<Body>,
    ns_host: &str,
) -> Result<Response, RelayError> {
    check_status(&r)?;
    let mut response = Response::new(body.unwrap_or_else(Body::empty));
    *response.status_mut() =
        StatusCode::from_u16(r.status_code).map_err(|_| RelayError::Rejected {
            status: 502,
            description: format!(
                "The listener answered with status {}, which is not a final HTTP status.",
                r.status_code
            ),
        })?;
    if let Some(reason) = r
        .status_description
        .as_deref()
        .and_then(|d| hyper::ext::ReasonPhrase::try_from(d.as_bytes().to_vec()).ok())
    {
        response.extensions_mut().insert(reason);
    }
    let headers = response.headers_mut();
    for (k, v) in r.response_headers.map(|h| h.0).unwrap_or_default() {
        if STRIPPED_RESPONSE.contains(&k.to_ascii_lowercase().as_str()) {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(&v),
        ) {
            headers.append(name, value);
        }
    }
    if let Ok(via) = HeaderValue::from_str(&format!("1.1 {ns_host}")) {
        headers.append(header::VIA, via);
    }
    Ok(response)
}
