//! One configured hybrid connection: learn the endpoint, keep N control channels open, and
//! for each `accept` dial the endpoint and bridge, or reject with a reason the sender sees.
//!
//! - Endpoint discovery as Microsoft's HCM does it: `userMetadata` from the runtime-info GET
//!   with the Listen key (PROTOCOL.md §10, §12.1), unless an override is configured.
//! - Reconnect with exponential backoff and jitter; stop on 404 and 401/403 (retrying
//!   cannot help), reporting the state.
//! - Renew the token at 80% of its lifetime (`renewToken`, §5.3); ping every keepalive
//!   interval and reconnect when the relay stays silent for two intervals (§5.4).
//! - The HCM only ever connects to its endpoint, whatever a sender sends.

use std::sync::Arc;
use std::time::Duration;

use hc_client::backoff::Backoff;
use hc_client::listener::{self, ControlChannel, ControlEvent, ListenerConfig};
use hc_client::relay::RelayEndpoint;
use hc_client::schedule::{Due, Schedule};
use hc_client::token::TokenProvider;
use hc_client::{Error, runtime};
use hc_protocol::control::AcceptCommand;
use hc_protocol::frame::close_code;
use hc_protocol::metadata::Endpoint;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{sleep, sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::Entry;
use crate::status::{Board, State};

/// Behaviour shared by every worker.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Lifetime of the tokens this HCM makes.
    pub token_ttl: Duration,
    /// Keep-alive ping interval on control channels.
    pub keepalive: Duration,
    /// First reconnect delay.
    pub backoff_base: Duration,
    /// Longest reconnect delay.
    pub backoff_cap: Duration,
    /// Time allowed to connect to the endpoint.
    pub endpoint_timeout: Duration,
    /// Read buffer per tunnel direction.
    pub buffer_size: usize,
    /// Extra CA file when the entry names none.
    pub ca_file: Option<std::path::PathBuf>,
    /// Tunnels this HCM serves at once, over all hybrid connections; an `accept` beyond them
    /// is rejected with 503 instead of taking more memory and descriptors.
    pub max_tunnels: usize,
    /// The permits behind `max_tunnels`, shared by every worker of one service.
    pub tunnel_slots: Arc<Semaphore>,
    /// Where "now" comes from for tokens and deadlines (tests pass one that follows paused
    /// tokio time).
    pub clock: hc_client::Clock,
    /// Opens connections to the relay instead of TCP and TLS (tests pass in-memory pipes).
    pub connector: Option<hc_client::relay::Connector>,
    /// How often the relay's listener count is asked for again.
    pub listener_count_refresh: Duration,
    /// Connections to the relay opened ahead of need for rendezvous ([`hc_client::warm`];
    /// not used with `connector`).
    pub warm: hc_client::warm::WarmOptions,
}

/// Default cap on concurrent tunnels per HCM process.
pub const DEFAULT_MAX_TUNNELS: usize = 10_000;

impl WorkerOptions {
    /// These options with a cap of `max` concurrent tunnels.
    pub fn with_max_tunnels(self, max: usize) -> Self {
        WorkerOptions {
            max_tunnels: max,
            tunnel_slots: Arc::new(Semaphore::new(max)),
            ..self
        }
    }
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            token_ttl: Duration::from_secs(3600),
            keepalive: Duration::from_secs(30),
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(30),
            endpoint_timeout: Duration::from_secs(5),
            buffer_size: 64 * 1024,
            ca_file: None,
            max_tunnels: DEFAULT_MAX_TUNNELS,
            tunnel_slots: Arc::new(Semaphore::new(DEFAULT_MAX_TUNNELS)),
            clock: hc_client::Clock::System,
            connector: None,
            listener_count_refresh: Duration::from_secs(10),
            warm: hc_client::warm::WarmOptions::default(),
        }
    }
}

/// Everything a worker's tasks share.
#[derive(Debug)]
struct Ctx {
    key: String,
    name: String,
    relay: RelayEndpoint,
    tokens: TokenProvider,
    board: Arc<Board>,
    options: WorkerOptions,
    tunnels: TaskTracker,
}

/// Why a worker ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerEnd {
    /// Cancelled (removed or shutting down).
    Stopped,
    /// Gave up with this state and message.
    Failed(State, String),
}

/// Serves `entry` until `cancel` or a permanent failure. Tunnels run on `tunnels` and outlive
/// the worker.
pub async fn run(
    entry: Entry,
    board: Arc<Board>,
    options: WorkerOptions,
    tunnels: TaskTracker,
    cancel: CancellationToken,
) -> WorkerEnd {
    let key = entry.key();
    let end = match prepare(&entry, &board, &options, tunnels) {
        Ok(ctx) => serve(Arc::new(ctx), &entry, cancel).await,
        Err(e) => WorkerEnd::Failed(State::Failed, e.to_string()),
    };
    let state = match &end {
        WorkerEnd::Stopped => State::Stopped,
        WorkerEnd::Failed(state, msg) => {
            warn!(hybrid_connection = %key, error = %msg, "giving up on this hybrid connection");
            *state
        }
    };
    board.update(&key, |s| {
        s.state = state;
        s.channels_open = 0;
        if let WorkerEnd::Failed(_, msg) = &end {
            s.last_error = Some(msg.clone());
        }
    });
    end
}

fn prepare(
    entry: &Entry,
    board: &Arc<Board>,
    options: &WorkerOptions,
    tunnels: TaskTracker,
) -> anyhow::Result<Ctx> {
    let cs = entry.parsed()?;
    let ca = entry.ca_file.as_deref().or(options.ca_file.as_deref());
    let tls = hc_client::tls::client_config(ca)?;
    let mut relay = RelayEndpoint::from_endpoint(&cs.endpoint, tls)?.with_clock(options.clock);
    if let Some(connector) = &options.connector {
        relay = relay.with_connector(connector.clone());
    } else {
        relay.warm = options.warm.pool();
    }
    let tokens = TokenProvider::from_connection_string(&cs, options.token_ttl);
    board.update(&entry.key(), |s| {
        s.state = State::Connecting;
        s.channels_wanted = entry.listeners;
    });
    Ok(Ctx {
        key: entry.key(),
        name: entry.name(),
        relay,
        tokens,
        board: board.clone(),
        options: options.clone(),
        tunnels,
    })
}

async fn serve(ctx: Arc<Ctx>, entry: &Entry, cancel: CancellationToken) -> WorkerEnd {
    let endpoint = match discover(&ctx, entry, &cancel).await {
        Ok(Some(e)) => e,
        Ok(None) => return WorkerEnd::Stopped,
        Err(end) => return end,
    };
    probe(&ctx, &endpoint).await;
    // The relay's listener count (other HCMs come and go too) is asked again periodically,
    // so `hcm list` and the metrics stay current.
    let refresher = tokio::spawn({
        let (ctx, cancel) = (ctx.clone(), cancel.clone());
        async move {
            let every = ctx.options.listener_count_refresh;
            loop {
                tokio::select! {
                    _ = sleep(every) => refresh_listener_count(ctx.clone()).await,
                    _ = cancel.cancelled() => return,
                }
            }
        }
    });
    // Every channel is watched at once: the first that gives up for good stops the others
    // and reports why, whichever it is.
    let mut channels = JoinSet::new();
    for i in 0..entry.listeners {
        channels.spawn(channel_loop(
            ctx.clone(),
            endpoint.clone(),
            i,
            cancel.clone(),
        ));
    }
    let mut end = WorkerEnd::Stopped;
    while let Some(done) = channels.join_next().await {
        if let Ok(WorkerEnd::Failed(state, msg)) = done
            && end == WorkerEnd::Stopped
        {
            cancel.cancel();
            end = WorkerEnd::Failed(state, msg);
        }
    }
    refresher.abort();
    end
}

fn permanent_state(e: &Error) -> State {
    if e.is_endpoint_not_found() {
        State::NotFound
    } else if e.is_unauthorized() {
        State::Unauthorized
    } else {
        State::Failed
    }
}

/// The endpoint: the override, else `userMetadata` via runtime info, retried with backoff
/// on transient errors. `Ok(None)` when cancelled.
async fn discover(
    ctx: &Ctx,
    entry: &Entry,
    cancel: &CancellationToken,
) -> Result<Option<Endpoint>, WorkerEnd> {
    let mut backoff = Backoff::new(ctx.options.backoff_base, ctx.options.backoff_cap);
    loop {
        let result = runtime::get(&ctx.relay, &ctx.name, &ctx.tokens).await;
        if let Ok(info) = &result {
            ctx.board.update(&ctx.key, |s| {
                s.relay_listener_count = Some(info.listener_count)
            });
        }
        let found = match (&entry.endpoint, result) {
            (Some(over), Ok(_)) => Endpoint::parse(over)
                .map(|e| (e, "override"))
                .map_err(|e| WorkerEnd::Failed(State::Failed, e.to_string())),
            (None, Ok(info)) => match info.user_metadata.as_deref() {
                None => Err(WorkerEnd::Failed(
                    State::Failed,
                    format!(
                        "hybrid connection '{}': UserMetadata must contain an endpoint composed of a host and port; it has no userMetadata",
                        ctx.name
                    ),
                )),
                Some(m) => Endpoint::from_user_metadata(m)
                    .map(|e| (e, "userMetadata"))
                    .map_err(|e| {
                        WorkerEnd::Failed(
                            State::Failed,
                            format!("hybrid connection '{}': {e}", ctx.name),
                        )
                    }),
            },
            (_, Err(e)) if e.is_permanent() => {
                Err(WorkerEnd::Failed(permanent_state(&e), e.to_string()))
            }
            (_, Err(e)) => {
                ctx.board.update(&ctx.key, |s| {
                    s.state = State::Disconnected;
                    s.last_error = Some(e.to_string());
                });
                debug!(hybrid_connection = %ctx.key, error = %e, "runtime info failed; retrying");
                tokio::select! {
                    _ = sleep(backoff.next_delay()) => continue,
                    _ = cancel.cancelled() => return Ok(None),
                }
            }
        };
        let (endpoint, source) = found?;
        info!(hybrid_connection = %ctx.key, endpoint = %endpoint, source, "endpoint");
        ctx.board.update(&ctx.key, |s| {
            s.endpoint = Some(endpoint.to_string());
            s.endpoint_source = Some(source.to_owned());
        });
        return Ok(Some(endpoint));
    }
}

/// One TCP connection attempt to the endpoint, to report its reachability before any tunnel.
async fn probe(ctx: &Ctx, endpoint: &Endpoint) {
    let _ = dial(ctx, endpoint).await;
}

/// Connects to the endpoint and records whether it answered.
async fn dial(ctx: &Ctx, endpoint: &Endpoint) -> Result<TcpStream, String> {
    let result = match timeout(
        ctx.options.endpoint_timeout,
        TcpStream::connect((endpoint.host.as_str(), endpoint.port)),
    )
    .await
    {
        Ok(Ok(tcp)) => Ok(tcp),
        Ok(Err(e)) => Err(format!(
            "Endpoint {endpoint} is unreachable from the Hybrid Connection Manager: {e}"
        )),
        Err(_) => Err(format!(
            "Endpoint {endpoint} did not answer within {} s",
            ctx.options.endpoint_timeout.as_secs_f32()
        )),
    };
    let now = hc_client::now_unix();
    ctx.board.update(&ctx.key, |s| {
        if result.is_err() {
            s.endpoint_dial_failures += 1;
        }
        s.endpoint_reachable = Some(result.is_ok());
        s.endpoint_checked_at = Some(now);
        s.endpoint_error = result.as_ref().err().cloned();
    });
    result
}

/// Keeps control channel `index` open until cancelled or a permanent failure.
async fn channel_loop(
    ctx: Arc<Ctx>,
    endpoint: Endpoint,
    index: u32,
    cancel: CancellationToken,
) -> WorkerEnd {
    let mut backoff = Backoff::new(ctx.options.backoff_base, ctx.options.backoff_cap);
    let tracking_id = hc_protocol::tracking::guid_from_bytes(rand::random());
    let config = ListenerConfig {
        endpoint: ctx.relay.clone(),
        path: ctx.name.clone(),
        tokens: ctx.tokens.clone(),
        tracking_id,
    };
    loop {
        let opened = tokio::select! {
            r = ControlChannel::open(&config) => r,
            _ = cancel.cancelled() => return WorkerEnd::Stopped,
        };
        match opened {
            Ok(channel) => {
                backoff.reset();
                channel_up(&ctx, index);
                tokio::spawn(refresh_listener_count(ctx.clone()));
                let why = serve_channel(&ctx, &endpoint, channel, &cancel).await;
                channel_down(&ctx, &why);
                if cancel.is_cancelled() {
                    return WorkerEnd::Stopped;
                }
                ctx.board.update(&ctx.key, |s| s.channel_losses += 1);
                tokio::spawn(refresh_listener_count(ctx.clone()));
                info!(hybrid_connection = %ctx.key, channel = index, reason = %why, "control channel lost; reconnecting");
            }
            Err(e) if e.is_permanent() => {
                return WorkerEnd::Failed(permanent_state(&e), e.to_string());
            }
            Err(e) => {
                if e.is_quota_exceeded() {
                    info!(hybrid_connection = %ctx.key, channel = index, error = %e, "the relay has no room for this listener now; retrying");
                } else {
                    debug!(hybrid_connection = %ctx.key, channel = index, error = %e, "cannot open control channel");
                }
                ctx.board.update(&ctx.key, |s| {
                    s.connect_failures += 1;
                    if s.channels_open == 0 {
                        s.state = if e.is_quota_exceeded() {
                            State::QuotaExceeded
                        } else {
                            State::Disconnected
                        };
                    }
                    s.last_error = Some(e.to_string());
                });
            }
        }
        tokio::select! {
            _ = sleep(backoff.next_delay()) => {}
            _ = cancel.cancelled() => return WorkerEnd::Stopped,
        }
    }
}

/// Asks the relay how many listeners the hybrid connection has now (for `hcm list`).
async fn refresh_listener_count(ctx: Arc<Ctx>) {
    if let Ok(info) = runtime::get(&ctx.relay, &ctx.name, &ctx.tokens).await {
        ctx.board.update(&ctx.key, |s| {
            s.relay_listener_count = Some(info.listener_count)
        });
    }
}

fn channel_up(ctx: &Ctx, index: u32) {
    info!(hybrid_connection = %ctx.key, channel = index, "control channel open");
    let now = hc_client::now_unix();
    ctx.board.update(&ctx.key, |s| {
        s.channels_open += 1;
        s.connects += 1;
        s.state = State::Connected;
        s.connected_since.get_or_insert(now);
    });
}

fn channel_down(ctx: &Ctx, why: &str) {
    ctx.board.update(&ctx.key, |s| {
        s.channels_open = s.channels_open.saturating_sub(1);
        if s.channels_open == 0 {
            s.state = State::Disconnected;
            s.connected_since = None;
        }
        s.last_error = Some(why.to_owned());
    });
}

/// Reads commands until the channel ends; returns why. Renewal and keep-alive follow
/// [`Schedule`]; Pongs and the Close echo the channel queued are sent between events.
async fn serve_channel(
    ctx: &Arc<Ctx>,
    endpoint: &Endpoint,
    mut channel: ControlChannel,
    cancel: &CancellationToken,
) -> String {
    let clock = ctx.options.clock;
    let mut schedule = Schedule::new(
        ctx.options.token_ttl,
        ctx.options.keepalive,
        clock.instant_now(),
    );
    loop {
        let control_ready = channel.control_ready();
        let step: Result<(), String> = tokio::select! {
            event = channel.next_event() => {
                schedule.heard(clock.instant_now());
                match event {
                    Ok(ControlEvent::Accept(accept)) => { spawn_tunnel(ctx, endpoint, accept); Ok(()) }
                    Ok(ControlEvent::Request(command)) => refuse_http(ctx, &mut channel, command).await.map_err(|e| e.to_string()),
                    Ok(ControlEvent::Ping) => Ok(()),
                    Ok(ControlEvent::Closed { code, reason }) => {
                        let _ = channel.flush_control().await;
                        return format!("relay closed the control channel: {} {reason}", code.unwrap_or(1005));
                    }
                    Ok(ControlEvent::Ignored(what)) => { debug!(hybrid_connection = %ctx.key, %what, "ignored"); Ok(()) }
                    Err(e) => return e.to_string(),
                }
            }
            _ = control_ready => channel.flush_control().await.map_err(|e| e.to_string()),
            _ = sleep_until(schedule.next_wake()) => match schedule.due(clock.instant_now()) {
                Some(Due::Renew) => renew(ctx, &mut channel).await,
                Some(Due::Ping) => channel.ping().await.map_err(|e| e.to_string()),
                Some(Due::Silent) => return "the relay did not answer keep-alive pings".into(),
                None => Ok(()),
            },
            _ = cancel.cancelled() => {
                channel.close(close_code::NORMAL, "Hybrid Connection Manager stopping").await;
                return "stopped".into();
            }
        };
        if let Err(why) = step {
            return why;
        }
    }
}

/// Sends `renewToken` with a token signed now.
async fn renew(ctx: &Ctx, channel: &mut ControlChannel) -> Result<(), String> {
    match ctx
        .tokens
        .token(&ctx.relay.host, &ctx.name, ctx.options.clock.unix_now())
    {
        Ok(Some(token)) => channel.renew(token).await.map_err(|e| e.to_string())?,
        Ok(None) => {}
        Err(e) => return Err(e.to_string()),
    }
    ctx.board.update(&ctx.key, |s| s.token_renewals += 1);
    debug!(hybrid_connection = %ctx.key, "token renewed");
    Ok(())
}

/// The answer to HTTP request mode: the HCM forwards WebSocket connections only, so it
/// answers as a .NET listener without a request handler does (PROTOCOL.md §8.2).
fn not_served() -> hc_client::http::HttpResponse {
    hc_client::http::HttpResponse {
        status: 501,
        reason: Some("The listener RequestHandler has not been configured.".into()),
        ..Default::default()
    }
}

async fn refuse_http(
    ctx: &Arc<Ctx>,
    channel: &mut ControlChannel,
    command: hc_protocol::control::RequestCommand,
) -> Result<(), Error> {
    if command.is_full() {
        let request = channel.read_request(command).await?;
        return channel.respond(&ctx.relay, &request, &not_served()).await;
    }
    let relay = ctx.relay.clone();
    tokio::spawn(async move {
        hc_client::http::serve_rendezvous(&relay, &command.address, |_| not_served()).await
    });
    Ok(())
}

/// Dial the endpoint first; join the rendezvous only if it answered, else reject with 502 and
/// a description naming the endpoint and the cause.
fn spawn_tunnel(ctx: &Arc<Ctx>, endpoint: &Endpoint, accept: AcceptCommand) {
    let (ctx, endpoint) = (ctx.clone(), endpoint.clone());
    let slot = match ctx.options.tunnel_slots.clone().try_acquire_owned() {
        Ok(slot) => slot,
        Err(_) => {
            let why = format!(
                "The Hybrid Connection Manager is at its limit of {} concurrent tunnels.",
                ctx.options.max_tunnels
            );
            warn!(hybrid_connection = %ctx.key, tracking_id = %accept.id, "{why} Connection rejected.");
            ctx.board.update(&ctx.key, |s| s.tunnels_failed += 1);
            let relay = ctx.relay.clone();
            ctx.tunnels
                .spawn(async move { listener::reject(&relay, &accept.address, 503, &why).await });
            return;
        }
    };
    ctx.clone().tunnels.spawn(async move {
        let _slot = slot;
        let started = std::time::Instant::now();
        let tcp = match dial(&ctx, &endpoint).await {
            Ok(tcp) => tcp,
            Err(why) => {
                ctx.board.update(&ctx.key, |s| s.tunnels_failed += 1);
                let rejected = listener::reject(&ctx.relay, &accept.address, 502, &why).await;
                warn!(hybrid_connection = %ctx.key, tracking_id = %accept.id, error = %why, reject_error = ?rejected.err().map(|e| e.to_string()), "endpoint unreachable; connection rejected");
                return;
            }
        };
        let ws = match listener::accept(&ctx.relay, &accept.address).await {
            Ok(ws) => ws,
            Err(e) => {
                ctx.board.update(&ctx.key, |s| s.tunnels_failed += 1);
                warn!(hybrid_connection = %ctx.key, tracking_id = %accept.id, error = %e, "rendezvous failed");
                return;
            }
        };
        ctx.board.update(&ctx.key, |s| {
            s.tunnels_active += 1;
            s.tunnels_total += 1;
        });
        let report = hc_client::bridge::bridge(ws, tcp, ctx.options.buffer_size).await;
        ctx.board.update(&ctx.key, |s| {
            s.tunnels_active -= 1;
            s.bytes_to_endpoint += report.to_tcp;
            s.bytes_from_endpoint += report.from_tcp;
        });
        info!(
            hybrid_connection = %ctx.key,
            tracking_id = %accept.id,
            to_endpoint = report.to_tcp,
            from_endpoint = report.from_tcp,
            duration_ms = started.elapsed().as_millis() as u64,
            outcome = report.aborted.as_deref().unwrap_or("closed"),
            "tunnel"
        );
    });
}
