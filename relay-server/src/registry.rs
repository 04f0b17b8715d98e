//! Live, in-memory relay state: the listeners of each hybrid connection, the rendezvous
//! waiting for a listener, and the connection count of each namespace.
//!
//! Every entry is owned by a guard ([`ListenerGuard`], [`PendingGuard`], [`ConnectionPermit`])
//! whose drop removes it, so a task that ends in any way (error, cancel, panic) cannot leave
//! a stale listener, a stuck rendezvous or a leaked quota slot behind.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use hyper::upgrade::OnUpgrade;
use rand::Rng as _;
use tokio::sync::{mpsc, oneshot};

use crate::error::RelayError;

/// A hybrid connection's identity: (namespace, path), both lower-case.
pub type HcKey = (String, String);

/// What the relay asks a control-channel task to write.
#[derive(Debug)]
pub enum ControlOut {
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
pub struct ListenerHandle {
    /// Registry-unique id.
    pub id: u64,
    /// The listener's tracking id.
    pub tracking_id: String,
    /// `wss://host[:port]` as the listener reached the relay; rendezvous addresses use it.
    pub base_url: String,
    /// Commands for its control-channel task. Bounded: a listener that stops reading slows
    /// the senders that pick it instead of growing memory.
    pub tx: mpsc::Sender<ControlOut>,
}

/// How a rendezvous ended, sent from the listener's request to the waiting sender.
#[derive(Debug)]
pub enum RendezvousReply {
    /// The listener joined; its socket upgrades with this protocol.
    Accepted {
        /// The listener's upgrade.
        upgrade: OnUpgrade,
        /// Sub-protocol the listener chose.
        protocol: Option<String>,
    },
    /// The listener refused with this status and description.
    Rejected {
        /// Status for the sender.
        status: u16,
        /// Reason phrase for the sender.
        description: String,
    },
}

/// A sender waiting for its listener.
#[derive(Debug)]
pub struct Pending {
    /// The hybrid connection the rendezvous belongs to.
    pub hc: HcKey,
    /// Where the outcome goes.
    pub reply: oneshot::Sender<RendezvousReply>,
}

/// All live state.
#[derive(Debug, Default)]
pub struct Registry {
    listeners: DashMap<HcKey, Vec<ListenerHandle>>,
    pending: DashMap<String, Pending>,
    http: DashMap<String, crate::http::PendingHttp>,
    connections: DashMap<String, usize>,
    next_id: AtomicU64,
}

impl Registry {
    /// A fresh listener id.
    pub fn next_listener_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a listener unless the hybrid connection already has `max`.
    pub fn add_listener(self: &Arc<Self>, hc: HcKey, handle: ListenerHandle, max: usize) -> Result<ListenerGuard, RelayError> {
        let id = handle.id;
        let mut list = self.listeners.entry(hc.clone()).or_default();
        if list.len() >= max {
            return Err(RelayError::TooManyListeners(list.len()));
        }
        list.push(handle);
        Ok(ListenerGuard { registry: self.clone(), hc, id })
    }

    /// A listener chosen uniformly at random (§6.1 step 3).
    pub fn pick_listener(&self, hc: &HcKey) -> Option<ListenerHandle> {
        let list = self.listeners.get(hc)?;
        if list.is_empty() {
            return None;
        }
        let i = rand::rng().random_range(0..list.len());
        Some(list[i].clone())
    }

    /// Connected listeners of a hybrid connection.
    pub fn listener_count(&self, hc: &HcKey) -> usize {
        self.listeners.get(hc).map_or(0, |l| l.len())
    }

    /// Asks every listener of `hc` to close (hybrid connection deleted: 1001, §5.5).
    pub fn close_listeners(&self, hc: &HcKey, code: u16, reason: &str) {
        let handles = self.listeners.get(hc).map(|l| l.clone()).unwrap_or_default();
        for h in handles {
            // A full queue means the task is stuck writing; it is closed by its own end.
            let _ = h.tx.try_send(ControlOut::Close(code, reason.to_owned()));
        }
    }

    /// Takes a quota slot of `namespace`, refusing past `max`.
    pub fn acquire_connection(self: &Arc<Self>, namespace: &str, max: usize) -> Result<ConnectionPermit, RelayError> {
        let mut count = self.connections.entry(namespace.to_owned()).or_default();
        if *count >= max {
            return Err(RelayError::TooManyConnections(*count));
        }
        *count += 1;
        Ok(ConnectionPermit { registry: self.clone(), namespace: namespace.to_owned() })
    }

    /// Connections currently counted for `namespace`.
    pub fn connection_count(&self, namespace: &str) -> usize {
        self.connections.get(namespace).map_or(0, |c| *c)
    }

    /// Records a waiting sender under `id`; refuses a duplicate id or more than `max` waiting.
    pub fn insert_pending(self: &Arc<Self>, id: &str, pending: Pending, max: usize) -> Result<PendingGuard, RelayError> {
        if self.pending.len() >= max {
            return Err(RelayError::Busy);
        }
        match self.pending.entry(id.to_owned()) {
            dashmap::Entry::Occupied(_) => Err(RelayError::BadRequest(format!("A connection with tracking id '{id}' is already waiting."))),
            dashmap::Entry::Vacant(v) => {
                v.insert(pending);
                Ok(PendingGuard { registry: self.clone(), id: id.to_owned() })
            }
        }
    }

    /// Removes and returns the waiting sender `id` (single use).
    pub fn take_pending(&self, id: &str) -> Option<Pending> {
        self.pending.remove(id).map(|(_, p)| p)
    }

    /// Rendezvous currently waiting.
    pub fn pending_count(&self) -> usize {
        self.pending.len() + self.http.len()
    }

    /// Records an HTTP request waiting for its listener.
    pub fn insert_http(self: &Arc<Self>, id: &str, pending: crate::http::PendingHttp, max: usize) -> Result<HttpGuard, RelayError> {
        if self.pending.len() + self.http.len() >= max {
            return Err(RelayError::Busy);
        }
        match self.http.entry(id.to_owned()) {
            dashmap::Entry::Occupied(_) => Err(RelayError::BadRequest(format!("A request with tracking id '{id}' is already waiting."))),
            dashmap::Entry::Vacant(v) => {
                v.insert(pending);
                Ok(HttpGuard { registry: self.clone(), id: id.to_owned() })
            }
        }
    }

    /// Removes and returns the waiting HTTP request `id`.
    pub fn take_http(&self, id: &str) -> Option<crate::http::PendingHttp> {
        self.http.remove(id).map(|(_, p)| p)
    }
}

/// Removes its listener from the registry when dropped.
#[derive(Debug)]
pub struct ListenerGuard {
    registry: Arc<Registry>,
    hc: HcKey,
    id: u64,
}

impl Drop for ListenerGuard {
    fn drop(&mut self) {
        self.registry.listeners.remove_if_mut(&self.hc, |_, list| {
            list.retain(|h| h.id != self.id);
            list.is_empty()
        });
    }
}

/// Gives its namespace quota slot back when dropped.
#[derive(Debug)]
pub struct ConnectionPermit {
    registry: Arc<Registry>,
    namespace: String,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.registry.connections.remove_if_mut(&self.namespace, |_, count| {
            *count = count.saturating_sub(1);
            *count == 0
        });
    }
}

/// Removes its HTTP request when dropped (answered, timed out, client gone).
#[derive(Debug)]
pub struct HttpGuard {
    registry: Arc<Registry>,
    id: String,
}

impl Drop for HttpGuard {
    fn drop(&mut self) {
        self.registry.http.remove(&self.id);
    }
}

/// Removes its rendezvous when dropped (expiry, sender gone, relay stopping).
#[derive(Debug)]
pub struct PendingGuard {
    registry: Arc<Registry>,
    id: String,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.registry.pending.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(registry: &Registry) -> (ListenerHandle, mpsc::Receiver<ControlOut>) {
        let (tx, rx) = mpsc::channel(1);
        let id = registry.next_listener_id();
        (ListenerHandle { id, tracking_id: format!("l{id}"), base_url: "wss://h".into(), tx }, rx)
    }

    #[test]
    fn listeners_are_capped_and_removed_by_their_guards() {
        let r = Arc::new(Registry::default());
        let hc: HcKey = ("ns".into(), "hc".into());
        let mut guards = Vec::new();
        for _ in 0..3 {
            guards.push(r.add_listener(hc.clone(), handle(&r).0, 3).unwrap());
        }
        assert!(matches!(r.add_listener(hc.clone(), handle(&r).0, 3), Err(RelayError::TooManyListeners(3))));
        assert_eq!(r.listener_count(&hc), 3);
        guards.truncate(1);
        assert_eq!(r.listener_count(&hc), 1);
        assert!(r.pick_listener(&hc).is_some());
        guards.clear();
        assert!(r.pick_listener(&hc).is_none() && r.listeners.is_empty());
    }

    #[test]
    fn random_choice_reaches_every_listener() {
        let r = Arc::new(Registry::default());
        let hc: HcKey = ("ns".into(), "hc".into());
        let _guards: Vec<_> = (0..3).map(|_| r.add_listener(hc.clone(), handle(&r).0, 25).unwrap()).collect();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            seen.insert(r.pick_listener(&hc).unwrap().id);
        }
        assert_eq!(seen.len(), 3);
    }

    #[test]
    fn permits_and_pending_are_released() {
        let r = Arc::new(Registry::default());
        let p1 = r.acquire_connection("ns", 2).unwrap();
        let _p2 = r.acquire_connection("ns", 2).unwrap();
        assert!(matches!(r.acquire_connection("ns", 2), Err(RelayError::TooManyConnections(2))));
        drop(p1);
        assert_eq!(r.connection_count("ns"), 1);
        let (tx, _rx) = oneshot::channel();
        let guard = r.insert_pending("id", Pending { hc: ("ns".into(), "hc".into()), reply: tx }, 10).unwrap();
        let (tx2, _rx2) = oneshot::channel();
        assert!(r.insert_pending("id", Pending { hc: ("ns".into(), "hc".into()), reply: tx2 }, 10).is_err());
        drop(guard);
        assert_eq!(r.pending_count(), 0);
        assert!(r.take_pending("id").is_none());
    }
}
