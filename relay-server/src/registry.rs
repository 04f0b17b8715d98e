//! Live, in-memory relay state, one [`NamespaceLive`] per namespace: the listeners of each
//! hybrid connection, the rendezvous and HTTP requests waiting for a listener, and the
//! connection count that the namespace quota limits.
//!
//! Tenants are kept apart by construction: every waiting entry is keyed by its hybrid
//! connection *and* id inside its own namespace, so an id reused in another namespace or on
//! another hybrid connection is a different entry, and a lookup from the wrong hybrid
//! connection finds nothing (it never removes someone else's entry).
//!
//! Every entry is owned by a guard ([`ListenerGuard`], [`PendingGuard`], [`HttpGuard`],
//! [`ConnectionPermit`]) whose drop removes it, so a task that ends in any way (error,
//! cancel, panic) cannot leave a stale listener, a stuck rendezvous or a leaked quota slot.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use dashmap::DashMap;
use hyper::upgrade::OnUpgrade;
use rand::Rng as _;
use tokio::sync::{mpsc, oneshot};

use hc_protocol::control::ResponseCommand;

use crate::error::RelayError;

/// A hybrid connection's identity: (namespace, path), both lower-case.
pub(crate) type HcKey = (String, String);

/// What the relay asks a control-channel task to write.
#[derive(Debug)]
pub(crate) enum ControlOut {
    /// A JSON command (text frame).
    Text(String),
    /// An `accept` for the rendezvous `id`; failed at once if never written.
    Accept {
        /// The rendezvous id.
        id: String,
        /// The command's JSON.
        json: String,
    },
    /// A full HTTP `request`, then its body as one binary message, nothing in between (§5.2).
    Request {
        /// The request id.
        id: String,
        /// The command's JSON.
        json: String,
        /// The body, when `body` is true.
        body: Option<Vec<u8>>,
    },
    /// Close the channel with this code and reason.
    Close(u16, String),
}

/// A connected listener as the rest of the relay sees it.
#[derive(Debug, Clone)]
pub(crate) struct ListenerHandle {
    /// Registry-unique id.
    pub id: u64,
    /// `wss://host[:port]` as the listener reached the relay; rendezvous addresses use it.
    pub base_url: String,
    /// What the status page shows of it.
    pub info: Arc<ListenerInfo>,
    /// Commands for its control-channel task. Bounded: a listener that stops reading fills
    /// it, is passed over by [`Registry::pick_listener`], and is dropped by its own task when
    /// a write stalls.
    pub tx: mpsc::Sender<ControlOut>,
}

/// A connected listener as the status page shows it.
#[derive(Debug)]
pub(crate) struct ListenerInfo {
    /// The TrackingId of its control channel.
    pub tracking_id: String,
    /// Its address as the relay saw it.
    pub peer: std::net::SocketAddr,
    /// Unix seconds when it connected.
    pub since: u64,
    /// When its token expires (moved by `renewToken`), Unix seconds.
    pub expires_at: AtomicU64,
    /// What an injected fault asks of its control channel (taken by the channel's task).
    pub fault: Mutex<Option<crate::fault::ListenerFault>>,
}

impl ListenerInfo {
    /// Leaves `order` for the control channel, which looks when faults change.
    pub(crate) fn order(&self, order: crate::fault::ListenerFault) {
        *lock(&self.fault) = Some(order);
    }

    /// The order left by a fault, if any.
    pub(crate) fn take_order(&self) -> Option<crate::fault::ListenerFault> {
        lock(&self.fault).take()
    }
}

/// How a rendezvous ended, sent from the listener's request to the waiting sender.
#[derive(Debug)]
pub(crate) enum RendezvousReply {
    /// The listener joined; its socket upgrades with this protocol.
    Accepted {
        /// The listener's upgrade.
        upgrade: OnUpgrade,
        /// Sub-protocol the listener chose.
        protocol: Option<String>,
        /// The listener's rendezvous connection, as the relay saw it.
        peer: std::net::SocketAddr,
    },
    /// The listener refused with this status and description.
    Rejected {
        /// Status for the sender.
        status: u16,
        /// Reason phrase for the sender.
        description: String,
    },
}

/// A sender waiting for its listener; the outcome goes through `reply`.
pub(crate) type Pending = oneshot::Sender<RendezvousReply>;

/// How a waiting HTTP request was answered (HTTP request mode, §8).
#[derive(Debug)]
pub(crate) enum Delivery {
    /// The response (and its body, if any) came on the control channel.
    Control(ResponseCommand, Option<Vec<u8>>),
    /// The listener opened the request's rendezvous; this is its socket.
    Rendezvous(hyper::upgrade::Upgraded),
    /// The listener went away first, or answered with something unusable.
    Failed(String),
}

/// An HTTP request waiting for its listener (kept under its hybrid connection and id).
#[derive(Debug)]
pub(crate) struct PendingHttp {
    /// Registry id of the listener the request went to: only its control channel may answer.
    pub listener: u64,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Delivery>,
}

/// The live state of one namespace. Locks are held for map operations only, never across an
/// await.
#[derive(Debug, Default)]
pub(crate) struct NamespaceLive {
    /// Listeners by hybrid connection (lower-case path).
    listeners: Mutex<HashMap<String, Vec<ListenerHandle>>>,
    /// Senders waiting for a listener, by (hybrid connection, id).
    pending: Mutex<HashMap<(String, String), Pending>>,
    /// HTTP requests waiting for a listener, by (hybrid connection, id).
    http: Mutex<HashMap<(String, String), PendingHttp>>,
    /// Listeners plus tunnels, against the namespace quota.
    connections: Mutex<usize>,
}

/// Locks `m`, taking the data of a poisoned lock as it is (no lock here is held across a
/// panic point that could leave it half changed).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl NamespaceLive {
    fn waiting(&self) -> usize {
        lock(&self.pending).len() + lock(&self.http).len()
    }
}

/// All live state.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    namespaces: DashMap<String, Arc<NamespaceLive>>,
    next_id: AtomicU64,
}

impl Registry {
    /// A fresh listener id.
    pub(crate) fn next_listener_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The live state of `namespace` (created on first use).
    fn ns(&self, namespace: &str) -> Arc<NamespaceLive> {
        if let Some(ns) = self.namespaces.get(namespace) {
            return ns.clone();
        }
        self.namespaces
            .entry(namespace.to_owned())
            .or_default()
            .clone()
    }

    fn existing(&self, namespace: &str) -> Option<Arc<NamespaceLive>> {
        self.namespaces.get(namespace).map(|ns| ns.clone())
    }

    /// Registers a listener unless the hybrid connection already has `max`.
    pub(crate) fn add_listener(
        &self,
        hc: &HcKey,
        handle: ListenerHandle,
        max: usize,
    ) -> Result<ListenerGuard, RelayError> {
        let ns = self.ns(&hc.0);
        let id = handle.id;
        {
            let mut all = lock(&ns.listeners);
            let list = all.entry(hc.1.clone()).or_default();
            if list.len() >= max {
                return Err(RelayError::TooManyListeners(list.len()));
            }
            list.push(handle);
        }
        Ok(ListenerGuard {
            ns,
            hc: hc.1.clone(),
            id,
        })
    }

    /// A listener chosen uniformly at random (§6.1 step 3) among those whose command queue
    /// has room; only when every queue is full, among all of them.
    pub(crate) fn pick_listener(&self, hc: &HcKey) -> Option<ListenerHandle> {
        let ns = self.existing(&hc.0)?;
        let all = lock(&ns.listeners);
        let list = all.get(&hc.1).filter(|l| !l.is_empty())?;
        let ready: Vec<&ListenerHandle> = list.iter().filter(|h| h.tx.capacity() > 0).collect();
        let mut rng = rand::rng();
        match ready.as_slice() {
            [] => Some(list[rng.random_range(0..list.len())].clone()),
            some => Some(some[rng.random_range(0..some.len())].clone()),
        }
    }

    /// Listeners connected per hybrid connection (those with none are left out).
    pub(crate) fn listener_counts(&self) -> Vec<(HcKey, usize)> {
        let mut out = Vec::new();
        for ns in self.namespaces.iter() {
            for (hc, list) in lock(&ns.listeners).iter() {
                out.push(((ns.key().clone(), hc.clone()), list.len()));
            }
        }
        out
    }

    /// Every connected listener with its hybrid connection.
    pub(crate) fn listeners(&self) -> Vec<(HcKey, Arc<ListenerInfo>)> {
        let mut out = Vec::new();
        for ns in self.namespaces.iter() {
            for (hc, list) in lock(&ns.listeners).iter() {
                for h in list {
                    out.push(((ns.key().clone(), hc.clone()), h.info.clone()));
                }
            }
        }
        out
    }

    /// Connected listeners of a hybrid connection.
    pub(crate) fn listener_count(&self, hc: &HcKey) -> usize {
        self.existing(&hc.0)
            .map_or(0, |ns| lock(&ns.listeners).get(&hc.1).map_or(0, Vec::len))
    }

    /// Asks every listener of `hc` to close (hybrid connection deleted: 1001, §5.5).
    pub(crate) fn close_listeners(&self, hc: &HcKey, code: u16, reason: &str) {
        let Some(ns) = self.existing(&hc.0) else {
            return;
        };
        let handles = lock(&ns.listeners).get(&hc.1).cloned().unwrap_or_default();
        for h in handles {
            // A full queue means the task is stuck writing; its write deadline closes it.
            let _ = h.tx.try_send(ControlOut::Close(code, reason.to_owned()));
        }
    }

    /// Takes a quota slot of `namespace`, refusing past `max`.
    pub(crate) fn acquire_connection(
        &self,
        namespace: &str,
        max: usize,
    ) -> Result<ConnectionPermit, RelayError> {
        let ns = self.ns(namespace);
        {
            let mut count = lock(&ns.connections);
            if *count >= max {
                return Err(RelayError::TooManyConnections(*count));
            }
            *count += 1;
        }
        Ok(ConnectionPermit { ns })
    }

    /// Connections currently counted for `namespace`.
    pub(crate) fn connection_count(&self, namespace: &str) -> usize {
        self.existing(namespace)
            .map_or(0, |ns| *lock(&ns.connections))
    }

    /// Records a sender waiting on `hc` under `id`; refuses a duplicate or more than `max`
    /// waiting in the namespace.
    pub(crate) fn insert_pending(
        &self,
        hc: &HcKey,
        id: &str,
        pending: Pending,
        max: usize,
    ) -> Result<PendingGuard, RelayError> {
        let ns = self.ns(&hc.0);
        if ns.waiting() >= max {
            return Err(RelayError::Busy);
        }
        let key = (hc.1.clone(), id.to_owned());
        {
            let mut map = lock(&ns.pending);
            if map.contains_key(&key) {
                return Err(RelayError::BadRequest(format!(
                    "A connection with tracking id '{id}' is already waiting."
                )));
            }
            map.insert(key.clone(), pending);
        }
        Ok(PendingGuard { ns, key })
    }

    /// Removes and returns the sender waiting on `hc` under `id` (single use). Entries of
    /// other hybrid connections and namespaces are out of reach.
    pub(crate) fn take_pending(&self, hc: &HcKey, id: &str) -> Option<Pending> {
        let ns = self.existing(&hc.0)?;
        lock(&ns.pending).remove(&(hc.1.clone(), id.to_owned()))
    }

    /// Rendezvous and HTTP requests currently waiting, over all namespaces.
    pub(crate) fn pending_count(&self) -> usize {
        self.namespaces.iter().map(|ns| ns.waiting()).sum()
    }

    /// Records an HTTP request on `hc` waiting for its listener.
    pub(crate) fn insert_http(
        &self,
        hc: &HcKey,
        id: &str,
        pending: PendingHttp,
        max: usize,
    ) -> Result<HttpGuard, RelayError> {
        let ns = self.ns(&hc.0);
        if ns.waiting() >= max {
            return Err(RelayError::Busy);
        }
        let key = (hc.1.clone(), id.to_owned());
        {
            let mut map = lock(&ns.http);
            if map.contains_key(&key) {
                return Err(RelayError::BadRequest(format!(
                    "A request with tracking id '{id}' is already waiting."
                )));
            }
            map.insert(key.clone(), pending);
        }
        Ok(HttpGuard { ns, key })
    }

    /// Removes and returns the HTTP request waiting on `hc` under `id`, but only when `owns`
    /// says yes; otherwise it stays where it is.
    pub(crate) fn take_http_if(
        &self,
        hc: &HcKey,
        id: &str,
        owns: impl FnOnce(&PendingHttp) -> bool,
    ) -> Option<PendingHttp> {
        let ns = self.existing(&hc.0)?;
        let mut map = lock(&ns.http);
        let key = (hc.1.clone(), id.to_owned());
        if !map.get(&key).is_some_and(owns) {
            return None;
        }
        map.remove(&key)
    }

    /// Removes and returns every HTTP request on `hc` for which `owns` says yes.
    pub(crate) fn take_http_all(
        &self,
        hc: &HcKey,
        owns: impl Fn(&PendingHttp) -> bool,
    ) -> Vec<PendingHttp> {
        let Some(ns) = self.existing(&hc.0) else {
            return Vec::new();
        };
        let mut map = lock(&ns.http);
        let keys: Vec<(String, String)> = map
            .iter()
            .filter(|(k, p)| k.0 == hc.1 && owns(p))
            .map(|(k, _)| k.clone())
            .collect();
        keys.iter().filter_map(|k| map.remove(k)).collect()
    }
}

/// Removes its listener from the registry when dropped.
#[derive(Debug)]
pub(crate) struct ListenerGuard {
    ns: Arc<NamespaceLive>,
    hc: String,
    id: u64,
}

impl ListenerGuard {
    /// The listener's registry id.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }
}

impl Drop for ListenerGuard {
    fn drop(&mut self) {
        let mut all = lock(&self.ns.listeners);
        if let Some(list) = all.get_mut(&self.hc) {
            list.retain(|h| h.id != self.id);
            if list.is_empty() {
                all.remove(&self.hc);
            }
        }
    }
}

/// Gives its namespace quota slot back when dropped.
#[derive(Debug)]
pub(crate) struct ConnectionPermit {
    ns: Arc<NamespaceLive>,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut count = lock(&self.ns.connections);
        *count = count.saturating_sub(1);
    }
}

/// Removes its HTTP request when dropped (answered, timed out, client gone).
#[derive(Debug)]
pub(crate) struct HttpGuard {
    ns: Arc<NamespaceLive>,
    key: (String, String),
}

impl Drop for HttpGuard {
    fn drop(&mut self) {
        lock(&self.ns.http).remove(&self.key);
    }
}

/// Removes its rendezvous when dropped (expiry, sender gone, relay stopping).
#[derive(Debug)]
pub(crate) struct PendingGuard {
    ns: Arc<NamespaceLive>,
    key: (String, String),
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        lock(&self.ns.pending).remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(registry: &Registry, queue: usize) -> (ListenerHandle, mpsc::Receiver<ControlOut>) {
        let (tx, rx) = mpsc::channel(queue);
        let id = registry.next_listener_id();
        (
            ListenerHandle {
                id,
                base_url: "wss://h".into(),
                info: Arc::new(ListenerInfo {
                    tracking_id: String::new(),
                    peer: std::net::SocketAddr::from(([127, 0, 0, 1], 1)),
                    since: 0,
                    expires_at: AtomicU64::new(0),
                    fault: Default::default(),
                }),
                tx,
            },
            rx,
        )
    }

    fn key(ns: &str, hc: &str) -> HcKey {
        (ns.into(), hc.into())
    }

    #[test]
    fn listeners_are_capped_and_removed_by_their_guards() {
        let r = Registry::default();
        let hc = key("ns", "hc");
        let mut guards = Vec::new();
        for _ in 0..3 {
            guards.push(r.add_listener(&hc, handle(&r, 1).0, 3).unwrap());
        }
        assert!(matches!(
            r.add_listener(&hc, handle(&r, 1).0, 3),
            Err(RelayError::TooManyListeners(3))
        ));
        assert_eq!(r.listener_count(&hc), 3);
        guards.truncate(1);
        assert_eq!(r.listener_count(&hc), 1);
        assert!(r.pick_listener(&hc).is_some());
        guards.clear();
        assert!(r.pick_listener(&hc).is_none());
    }

    #[test]
    fn random_choice_reaches_every_listener_with_room() {
        let r = Registry::default();
        let hc = key("ns", "hc");
        let (full, _full_rx) = handle(&r, 1);
        full.tx.try_send(ControlOut::Text("x".into())).unwrap();
        let full_id = full.id;
        let mut keep = vec![r.add_listener(&hc, full, 25).unwrap()];
        let mut rxs = Vec::new();
        for _ in 0..3 {
            let (h, rx) = handle(&r, 4);
            rxs.push(rx);
            keep.push(r.add_listener(&hc, h, 25).unwrap());
        }
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            seen.insert(r.pick_listener(&hc).unwrap().id);
        }
        assert_eq!(
            seen.len(),
            3,
            "the listener with a full queue is passed over"
        );
        assert!(!seen.contains(&full_id));
    }

    #[test]
    fn permits_are_per_namespace_and_released() {
        let r = Registry::default();
        let p1 = r.acquire_connection("ns", 2).unwrap();
        let _p2 = r.acquire_connection("ns", 2).unwrap();
        assert!(matches!(
            r.acquire_connection("ns", 2),
            Err(RelayError::TooManyConnections(2))
        ));
        assert!(
            r.acquire_connection("other", 2).is_ok(),
            "another namespace has its own quota"
        );
        drop(p1);
        assert_eq!(r.connection_count("ns"), 1);
    }

    #[test]
    fn waiting_entries_are_keyed_by_hybrid_connection_and_namespace() {
        let r = Registry::default();
        let (a, b, other_ns) = (key("ns", "a"), key("ns", "b"), key("ns2", "a"));
        let (tx, _rx) = oneshot::channel();
        let guard = r.insert_pending(&a, "id", tx, 10).unwrap();
        let (tx, _rx) = oneshot::channel();
        assert!(
            r.insert_pending(&a, "id", tx, 10).is_err(),
            "same hybrid connection, same id"
        );
        let (tx, _rx) = oneshot::channel();
        let _b = r
            .insert_pending(&b, "id", tx, 10)
            .expect("same id on another hybrid connection");
        let (tx, _rx) = oneshot::channel();
        let _o = r
            .insert_pending(&other_ns, "id", tx, 10)
            .expect("same id in another namespace");
        assert!(r.take_pending(&key("ns", "c"), "id").is_none());
        assert_eq!(
            r.pending_count(),
            3,
            "a lookup from elsewhere removes nothing"
        );
        drop(guard);
        assert!(r.take_pending(&a, "id").is_none());
        assert_eq!(r.pending_count(), 2);
    }

    #[test]
    fn pending_cap_is_per_namespace() {
        let r = Registry::default();
        let mut guards = Vec::new();
        for i in 0..2 {
            let (tx, _rx) = oneshot::channel();
            guards.push(
                r.insert_pending(&key("busy", "a"), &i.to_string(), tx, 2)
                    .unwrap(),
            );
        }
        let (tx, _rx) = oneshot::channel();
        assert!(matches!(
            r.insert_pending(&key("busy", "a"), "x", tx, 2),
            Err(RelayError::Busy)
        ));
        let (tx, _rx) = oneshot::channel();
        assert!(r.insert_pending(&key("calm", "a"), "x", tx, 2).is_ok());
    }
}
