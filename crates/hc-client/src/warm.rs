//! Warm connections to the relay: TCP (and TLS) connections opened ahead of need, so that a
//! new tunnel pays only its WebSocket upgrade (issue 16). The relay sees ordinary connects,
//! each carrying one ordinary request, so this is as faithful to the real service as dialling
//! on demand.
//!
//! - **Only where it pays.** A destination (`host:port`) is kept warm once it has been opened
//!   twice within [`WarmOptions::keep_warm_for`], and only until that long after its last use.
//!   A single connect, or a rendezvous host that never comes back (the real service may name a
//!   different front end in each `accept`), costs no extra connection.
//! - **Never stale.** A connection waits at most [`WarmOptions::max_idle`], below the relay's
//!   own limit on a connection that sends no request (the emulator's `--handshake-timeout`,
//!   10 s by default), and is checked when taken: one the relay closed or wrote to is dropped.
//!   If a taken connection still fails before any answer, the caller retries once on a fresh
//!   one ([`crate::RelayEndpoint::upgrade`]).
//! - **Bounded.** At most [`WarmOptions::size`] ready per destination, at most
//!   [`MAX_DESTINATIONS`] destinations, and a failed dial waits for the next round of upkeep.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::Notify;

use crate::BoxIo;
use crate::relay::RelayEndpoint;

/// Most destinations kept warm at once; the least recently used one is forgotten beyond it.
pub const MAX_DESTINATIONS: usize = 16;

/// How many connections to keep ready, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WarmOptions {
    /// Connections kept ready per destination in use (0 turns warming off).
    pub size: usize,
    /// Longest a ready connection waits before it is closed and replaced.
    pub max_idle: Duration,
    /// How long after its last use a destination is kept warm.
    pub keep_warm_for: Duration,
}

impl WarmOptions {
    /// `size` ready per destination, each replaced after `max_idle`; a destination is kept
    /// warm for six times `max_idle` after its last use (the rule `hcm` and the shim follow).
    pub fn new(size: usize, max_idle: Duration) -> Self {
        WarmOptions {
            size,
            max_idle,
            keep_warm_for: max_idle * 6,
        }
    }

    /// A pool with these options, or `None` when `size` is 0 (warming off).
    pub fn pool(self) -> Option<WarmPool> {
        (self.size > 0).then(|| WarmPool::new(self))
    }
}

impl Default for WarmOptions {
    /// 2 ready, replaced after 5 s, warm for 30 s after the last use.
    fn default() -> Self {
        WarmOptions::new(2, Duration::from_secs(5))
    }
}

/// What a pool has done, for metrics and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WarmStats {
    /// Connections opened ahead of need.
    pub dialed: u64,
    /// Opens served by a ready connection.
    pub hits: u64,
    /// Opens that found none ready and dialled.
    pub misses: u64,
    /// Ready connections dropped: too old, closed or written to by the relay.
    pub discarded: u64,
    /// Dials ahead of need that failed.
    pub failed: u64,
}

/// Counts of every pool in the process ([`process_stats`]).
static PROCESS: Counters = Counters::new();

/// The help text of the `*_warm_connections_total{outcome}` counters of `hcm` and the shim.
pub const METRIC_HELP: &str = "Connections to the relay opened ahead of need, by outcome (dialed: opened ahead; hit: a tunnel took a ready one; miss: none was ready, the tunnel dialled; discarded: closed unused, too old or closed by the relay; failed: a dial ahead failed).";

/// What every pool of this process has done, for its metrics.
pub fn process_stats() -> WarmStats {
    PROCESS.read()
}

impl WarmStats {
    /// The counts by outcome name, as metrics label them.
    pub fn by_outcome(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("dialed", self.dialed),
            ("hit", self.hits),
            ("miss", self.misses),
            ("discarded", self.discarded),
            ("failed", self.failed),
        ]
    }
}

/// What a count in [`Counters`] counts (the fields of [`WarmStats`]).
#[derive(Clone, Copy)]
enum Outcome {
    Dialed,
    Hit,
    Miss,
    Discarded,
    Failed,
}

/// One count per [`Outcome`].
struct Counters([AtomicU64; 5]);

impl Counters {
    const fn new() -> Self {
        Counters([const { AtomicU64::new(0) }; 5])
    }

    fn read(&self) -> WarmStats {
        let count = |o: Outcome| self.0[o as usize].load(Ordering::Relaxed);
        WarmStats {
            dialed: count(Outcome::Dialed),
            hits: count(Outcome::Hit),
            misses: count(Outcome::Miss),
            discarded: count(Outcome::Discarded),
            failed: count(Outcome::Failed),
        }
    }

    /// Adds `n` to one count here and in the process's counts.
    fn add(&self, outcome: Outcome, n: u64) {
        self.0[outcome as usize].fetch_add(n, Ordering::Relaxed);
        PROCESS.0[outcome as usize].fetch_add(n, Ordering::Relaxed);
    }
}

/// One destination's ready connections.
struct Slot {
    ready: VecDeque<(Instant, BoxIo)>,
    dialing: usize,
    uses: u64,
    last_use: Instant,
}

struct Inner {
    options: WarmOptions,
    slots: Mutex<HashMap<(String, u16), Slot>>,
    /// Held apart so the upkeep task can wait on it without keeping the pool alive.
    wake: Arc<Notify>,
    counters: Counters,
    /// Upkeep tasks running (at most one).
    upkeeps: Arc<AtomicU64>,
}

/// A pool of warm connections shared by the clones of a [`RelayEndpoint`]. Dropping the last
/// handle closes the ready connections; the upkeep task ends within a tick.
#[derive(Clone)]
pub struct WarmPool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for WarmPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WarmPool")
            .field("options", &self.inner.options)
            .field("stats", &self.stats())
            .finish()
    }
}

impl WarmPool {
    /// A pool with `options`; its upkeep task starts with the first use.
    pub fn new(options: WarmOptions) -> Self {
        WarmPool {
            inner: Arc::new(Inner {
                options,
                slots: Mutex::new(HashMap::new()),
                wake: Arc::new(Notify::new()),
                counters: Counters::new(),
                upkeeps: Arc::new(AtomicU64::new(0)),
            }),
        }
    }

    /// The options it was made with.
    pub fn options(&self) -> WarmOptions {
        self.inner.options
    }

    /// Counts so far.
    pub fn stats(&self) -> WarmStats {
        self.inner.counters.read()
    }

    /// Connections ready now for `host:port`.
    pub fn ready(&self, host: &str, port: u16) -> usize {
        lock(&self.inner.slots)
            .get(&(host.to_owned(), port))
            .map_or(0, |s| s.ready.len())
    }

    /// A ready connection to `host:port`, or `None` (the caller dials). Either way the use is
    /// recorded and the upkeep task is told to top the destination up. `endpoint` (without
    /// its pool) is how the upkeep task dials.
    pub(crate) fn take(&self, endpoint: &RelayEndpoint, host: &str, port: u16) -> Option<BoxIo> {
        let now = Instant::now();
        let key = (host.to_owned(), port);
        let mut taken = None;
        let mut discarded = 0;
        {
            let mut slots = lock(&self.inner.slots);
            if !slots.contains_key(&key) && slots.len() >= MAX_DESTINATIONS {
                let oldest = slots
                    .iter()
                    .min_by_key(|(_, s)| s.last_use)
                    .map(|(k, _)| k.clone());
                if let Some(k) = oldest
                    && let Some(gone) = slots.remove(&k)
                {
                    discarded += gone.ready.len() as u64;
                }
            }
            let slot = slots.entry(key).or_insert_with(|| Slot {
                ready: VecDeque::new(),
                dialing: 0,
                uses: 0,
                last_use: now,
            });
            slot.uses += 1;
            slot.last_use = now;
            while let Some((since, mut io)) = slot.ready.pop_front() {
                if now.duration_since(since) < self.inner.options.max_idle && quiet(&mut io) {
                    taken = Some(io);
                    break;
                }
                discarded += 1;
            }
        }
        let c = &self.inner.counters;
        c.add(Outcome::Discarded, discarded);
        c.add(
            if taken.is_some() {
                Outcome::Hit
            } else {
                Outcome::Miss
            },
            1,
        );
        // One upkeep task per pool: it runs until the pool is dropped (or its runtime ends,
        // after which the next use starts another).
        if self
            .inner
            .upkeeps
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            let endpoint = RelayEndpoint {
                warm: None,
                ..endpoint.clone()
            };
            let wake = self.inner.wake.clone();
            tokio::spawn(upkeep(Arc::downgrade(&self.inner), wake, endpoint));
        }
        self.inner.wake.notify_one();
        taken
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether a ready connection is still quiet: not closed, not errored, nothing sent by the
/// relay (which has nothing to say before a request). One read is polled without waiting;
/// for TLS it also takes in what the relay sent after the handshake (session tickets).
fn quiet(io: &mut BoxIo) -> bool {
    let mut byte = [0u8; 1];
    let mut buf = ReadBuf::new(&mut byte);
    let mut cx = Context::from_waker(Waker::noop());
    matches!(Pin::new(io).poll_read(&mut cx, &mut buf), Poll::Pending)
}

/// Keeps the pool's destinations topped up until the pool is dropped (it holds only a weak
/// handle). Runs when told of a use, and every half `max_idle` to replace old connections.
async fn upkeep(pool: Weak<Inner>, wake: Arc<Notify>, endpoint: RelayEndpoint) {
    // Counted in by `take`, counted out here when the task ends or is dropped.
    let Some(running) = pool.upgrade().map(|p| p.upkeeps.clone()) else {
        return;
    };
    let _ended = Ended(running);
    loop {
        let Some(inner) = pool.upgrade() else { return };
        let tick = inner.options.max_idle / 2;
        let dials = plan(&inner);
        for (host, port) in dials {
            let (pool, endpoint) = (pool.clone(), endpoint.clone());
            tokio::spawn(async move {
                let io = endpoint.open(&host, port).await;
                let Some(inner) = pool.upgrade() else { return };
                let mut slots = lock(&inner.slots);
                let Some(slot) = slots.get_mut(&(host, port)) else {
                    return;
                };
                slot.dialing = slot.dialing.saturating_sub(1);
                match io {
                    Ok(io) => {
                        inner.counters.add(Outcome::Dialed, 1);
                        slot.ready.push_back((Instant::now(), io));
                    }
                    Err(_) => {
                        inner.counters.add(Outcome::Failed, 1);
                    }
                }
            });
        }
        drop(inner);
        // Dropping the pool closes its ready connections at once; this task notices at the
        // next tick at the latest.
        let _ = tokio::time::timeout(tick.max(Duration::from_millis(10)), wake.notified()).await;
    }
}

/// Counts an upkeep task out when it ends.
struct Ended(Arc<AtomicU64>);

impl Drop for Ended {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Drops what is too old, forgets destinations cold for `keep_warm_for`, and returns the
/// dials that bring each warm destination back to `size` ready (counted as dialling).
fn plan(inner: &Inner) -> Vec<(String, u16)> {
    let now = Instant::now();
    let o = inner.options;
    let mut dials = Vec::new();
    let mut discarded = 0;
    let mut slots = lock(&inner.slots);
    slots.retain(|_, slot| {
        let before = slot.ready.len();
        slot.ready
            .retain(|(since, _)| now.duration_since(*since) < o.max_idle);
        discarded += (before - slot.ready.len()) as u64;
        let cold = now.duration_since(slot.last_use) >= o.keep_warm_for;
        !(cold && slot.ready.is_empty() && slot.dialing == 0)
    });
    for ((host, port), slot) in slots.iter_mut() {
        let warm = slot.uses >= 2 && now.duration_since(slot.last_use) < o.keep_warm_for;
        if !warm {
            continue;
        }
        // Replace a connection before it reaches `max_idle` rather than when it has.
        let fresh = slot
            .ready
            .iter()
            .filter(|(since, _)| now.duration_since(*since) < o.max_idle / 2 + o.max_idle / 4)
            .count();
        let want = o.size.saturating_sub(fresh + slot.dialing);
        for _ in 0..want {
            slot.dialing += 1;
            dials.push((host.clone(), *port));
        }
    }
    inner.counters.add(Outcome::Discarded, discarded);
    dials
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;
    use tokio::sync::{mpsc, watch};

    use super::*;
    use crate::handshake::WsStream;

    /// A relay stand-in on loopback. It numbers the connections it accepts and reports each
    /// accept and each close. It reads one request head and answers 101, except that a
    /// connection numbered below `close_idle` is closed while it waits for its request, and
    /// one below `refuse` is closed when its request arrives.
    struct Relay {
        port: u16,
        accepts: mpsc::UnboundedReceiver<usize>,
        closed: mpsc::UnboundedReceiver<usize>,
        close_idle: watch::Sender<usize>,
        refuse: watch::Sender<usize>,
    }

    async fn relay() -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (accepted_tx, accepts) = mpsc::unbounded_channel();
        let (closed_tx, closed) = mpsc::unbounded_channel();
        let (close_idle, idle_rx) = watch::channel(0usize);
        let (refuse, refuse_rx) = watch::channel(0usize);
        tokio::spawn(async move {
            let mut n = 0;
            while let Ok((mut s, _)) = listener.accept().await {
                let _ = accepted_tx.send(n);
                let (closed_tx, mut idle, refuse) =
                    (closed_tx.clone(), idle_rx.clone(), refuse_rx.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut b = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        tokio::select! {
                            r = s.read(&mut b) => match r {
                                Ok(1) => head.push(b[0]),
                                _ => break,
                            },
                            _ = idle.wait_for(|d| n < *d), if head.is_empty() => break,
                        }
                    }
                    if head.ends_with(b"\r\n\r\n") && n >= *refuse.borrow() {
                        let text = String::from_utf8_lossy(&head).into_owned();
                        let key = text
                            .lines()
                            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                            .unwrap_or_default();
                        let answer = format!(
                            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                            hc_protocol::frame::accept_key(key)
                        );
                        let _ = s.write_all(answer.as_bytes()).await;
                        // Held open until the client goes.
                        let _ = s.read(&mut b).await;
                    }
                    drop(s);
                    let _ = closed_tx.send(n);
                });
                n += 1;
            }
        });
        Relay {
            port,
            accepts,
            closed,
            close_idle,
            refuse,
        }
    }

    fn endpoint(port: u16, options: WarmOptions) -> (RelayEndpoint, WarmPool) {
        let pool = WarmPool::new(options);
        let tls = crate::tls::client_config(None).unwrap();
        let e = RelayEndpoint::from_endpoint(&format!("ws://127.0.0.1:{port}/"), tls)
            .unwrap()
            .with_warm(pool.clone());
        (e, pool)
    }

    async fn upgrade(e: &RelayEndpoint) -> Result<WsStream, crate::Error> {
        e.upgrade("127.0.0.1", e.port, "/$hc/a", "127.0.0.1", &[])
            .await
            .map(|r| r.expect("a 101"))
    }

    async fn recv(rx: &mut mpsc::UnboundedReceiver<usize>) -> usize {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("within 10 s")
            .expect("the relay stand-in runs")
    }

    /// Waits (at most 10 s) until `pool` has `n` connections ready to `port`.
    async fn ready(pool: &WarmPool, port: u16, n: usize) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while pool.ready("127.0.0.1", port) != n {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the pool reaches the count within 10 s");
    }

    /// Two cold uses, after which two connections are warm (stand-in numbers 2 and 3).
    async fn warmed_up(r: &mut Relay, e: &RelayEndpoint, pool: &WarmPool) -> [WsStream; 2] {
        let first = upgrade(e).await.unwrap();
        assert_eq!(recv(&mut r.accepts).await, 0);
        let second = upgrade(e).await.unwrap();
        assert_eq!(recv(&mut r.accepts).await, 1);
        assert_eq!(
            (recv(&mut r.accepts).await, recv(&mut r.accepts).await),
            (2, 3)
        );
        ready(pool, r.port, 2).await;
        [first, second]
    }

    #[tokio::test]
    async fn a_destination_used_twice_is_kept_warm_and_the_next_tunnel_takes_a_ready_one() {
        let mut r = relay().await;
        let (e, pool) = endpoint(r.port, WarmOptions::default());
        let _first = upgrade(&e).await.unwrap();
        assert_eq!(recv(&mut r.accepts).await, 0);
        // One use warms nothing: a single connect costs no extra connection.
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            (pool.stats().dialed, pool.ready("127.0.0.1", r.port)),
            (0, 0)
        );
        let _second = upgrade(&e).await.unwrap();
        assert_eq!(recv(&mut r.accepts).await, 1);
        assert_eq!(
            (recv(&mut r.accepts).await, recv(&mut r.accepts).await),
            (2, 3)
        );
        ready(&pool, r.port, 2).await;
        let _third = upgrade(&e).await.unwrap();
        let s = pool.stats();
        assert_eq!((s.hits, s.misses), (1, 2));
        // The taken one is replaced: one more connect, and nothing was closed on the way.
        assert_eq!(recv(&mut r.accepts).await, 4);
        ready(&pool, r.port, 2).await;
        assert!(r.closed.try_recv().is_err());
        // Dropping the pool closes what it holds.
        drop((e, pool));
        let mut gone = [recv(&mut r.closed).await, recv(&mut r.closed).await];
        gone.sort_unstable();
        assert_eq!(gone, [3, 4]);
    }

    #[tokio::test]
    async fn warm_connections_the_relay_closed_are_not_used() {
        let mut r = relay().await;
        let (e, pool) = endpoint(r.port, WarmOptions::default());
        let _held = warmed_up(&mut r, &e, &pool).await;
        // The relay closes both idle warm connections (as at its handshake timeout).
        r.close_idle.send_replace(4);
        let mut gone = [recv(&mut r.closed).await, recv(&mut r.closed).await];
        gone.sort_unstable();
        assert_eq!(gone, [2, 3]);
        let _c = upgrade(&e).await.expect("an upgrade on a good connection");
        assert!(recv(&mut r.accepts).await >= 4);
        assert!(
            r.closed.try_recv().is_err(),
            "only the two warm ones closed"
        );
    }

    #[tokio::test]
    async fn an_upgrade_whose_warm_connection_fails_before_any_answer_is_sent_again() {
        let mut r = relay().await;
        let (e, pool) = endpoint(r.port, WarmOptions::default());
        let _held = warmed_up(&mut r, &e, &pool).await;
        // Warm connections 2 and 3 look fine but are closed when the request arrives.
        r.refuse.send_replace(4);
        let _c = upgrade(&e).await.expect("sent again on a new connection");
        assert_eq!(pool.stats().hits, 1);
        assert_eq!(recv(&mut r.closed).await, 2);
    }

    #[tokio::test]
    async fn old_connections_are_replaced_and_a_destination_left_unused_goes_cold() {
        let mut r = relay().await;
        let options = WarmOptions {
            size: 2,
            max_idle: Duration::from_millis(200),
            keep_warm_for: Duration::from_millis(600),
        };
        let (e, pool) = endpoint(r.port, options);
        let _held = warmed_up(&mut r, &e, &pool).await;
        // Within keep_warm_for, connections older than max_idle are replaced by new ones;
        // after it, the last ones are closed and none replace them.
        let mut closed = Vec::new();
        while closed.len() < 4 {
            closed.push(recv(&mut r.closed).await);
        }
        assert!(closed.contains(&2) && closed.contains(&3), "{closed:?}");
        tokio::time::timeout(Duration::from_secs(10), async {
            while pool.ready("127.0.0.1", r.port) > 0 || !lock(&pool.inner.slots).is_empty() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the destination goes cold");
        let dialed = pool.stats().dialed as usize;
        // Every connection the pool opened was closed by it (none is held open).
        while closed.len() < dialed {
            closed.push(recv(&mut r.closed).await);
        }
        assert!(
            pool.stats().discarded as usize >= dialed,
            "{:?}",
            pool.stats()
        );
        // Used again, it warms again, still with a single upkeep task.
        let _again = [upgrade(&e).await.unwrap(), upgrade(&e).await.unwrap()];
        ready(&pool, r.port, 2).await;
        assert_eq!(pool.inner.upkeeps.load(Ordering::Relaxed), 1);
    }
}
