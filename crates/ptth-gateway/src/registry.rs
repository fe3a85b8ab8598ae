//! The registry of reversed origin connections, and the router that picks one per request.
//!
//! Every mechanism ends in a [`OriginConn`]: a connection over which the gateway can send
//! HTTP requests to an authenticated origin, with the scopes it may serve and its capacity
//! (the origin's HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`, or one for HTTP/1.1). Routing
//! picks, among the connections whose scope matches the request, the most specific scope,
//! then the least outstanding requests relative to capacity. When every matching connection
//! is full, the request waits in a bounded queue.

use crate::forward::Sender;
use ptth_core::{Mechanism, RequestTarget, Scope, Specificity};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};

/// What admitted an origin connection: kept with it so a reload of the grants can check
/// it again.
#[derive(Debug, Clone)]
pub struct Admission {
    /// Who the origin authenticated as, for logs (grant names; never a secret).
    pub identity: String,
    /// The grants that authenticated it.
    pub grant_names: Vec<String>,
    /// The origins it registered.
    pub origins: Vec<ptth_core::SerializedOrigin>,
    /// The path prefixes it registered.
    pub path_prefixes: Vec<String>,
    /// What its credentials proved (hashes, keys, certificate names; no secret): a reload
    /// re-authenticates it with this against the new grants.
    pub proven: ptth_auth::Proven,
}

/// One reversed connection to an origin, as routing sees it.
#[derive(Debug)]
pub struct OriginConn {
    /// Gateway-local id, for logs.
    pub id: u64,
    /// How the connection was set up.
    pub mechanism: Mechanism,
    /// Which requests may be routed here.
    pub scopes: Vec<Scope>,
    /// Who the origin authenticated as and what it registered.
    pub admission: Admission,
    /// The origin's address as the gateway saw it.
    pub peer: SocketAddr,
    pub(crate) sender: Sender,
    outstanding: AtomicUsize,
    closed: AtomicBool,
    removed: AtomicBool,
    gone: Notify,
    driver: tokio::task::AbortHandle,
}

impl OriginConn {
    pub(crate) fn new(
        mechanism: Mechanism,
        scopes: Vec<Scope>,
        admission: Admission,
        peer: SocketAddr,
        sender: Sender,
        driver: tokio::task::AbortHandle,
    ) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Self {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            mechanism,
            scopes,
            admission,
            peer,
            sender,
            outstanding: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            removed: AtomicBool::new(false),
            gone: Notify::new(),
            driver,
        }
    }

    /// Requests this connection can carry at once.
    pub fn capacity(&self) -> usize {
        self.sender.capacity()
    }

    /// Requests in flight (response body not yet finished).
    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Acquire)
    }

    /// Whether the connection can take new requests.
    pub fn is_usable(&self) -> bool {
        !self.closed.load(Ordering::Acquire) && !self.sender.is_closed()
    }

    /// Stops routing new requests here (the connection is closing or draining).
    pub fn mark_closed(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// Resolves once the connection has ended (its driver task finished).
    pub async fn gone(&self) {
        loop {
            let notified = self.gone.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.removed.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    fn try_reserve(&self) -> bool {
        let cap = self.capacity();
        self.outstanding
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            })
            .is_ok()
    }

    fn best_match(&self, target: &RequestTarget) -> Option<Specificity> {
        self.scopes
            .iter()
            .filter(|s| s.matches(target))
            .map(|s| s.specificity())
            .max()
    }
}

/// Limits of the wait queue.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    /// Requests that may wait at once, over all scopes.
    pub max_waiting: usize,
    /// How long a request may wait for a free connection.
    pub max_wait: Duration,
}

/// Why a request got no connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteError {
    /// No connected origin serves this authority and path.
    NoOrigin,
    /// Every matching connection is busy and the queue is full.
    QueueFull,
    /// Every matching connection stayed busy for the whole wait.
    QueueTimeout,
}

/// All reversed connections of this gateway.
#[derive(Debug)]
pub struct Registry {
    conns: Mutex<Vec<Arc<OriginConn>>>,
    changed: Notify,
    queue: Semaphore,
    limits: QueueLimits,
}

/// A slot on a connection, held until the response body ends.
#[derive(Debug)]
pub struct Reservation {
    conn: Arc<OriginConn>,
    registry: Arc<Registry>,
}

impl Reservation {
    /// The connection reserved.
    pub fn conn(&self) -> &Arc<OriginConn> {
        &self.conn
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.conn.outstanding.fetch_sub(1, Ordering::AcqRel);
        self.registry.changed.notify_waiters();
    }
}

enum Pick {
    Got(Arc<OriginConn>),
    Busy,
    NoRoute,
}

impl Registry {
    /// An empty registry.
    pub fn new(limits: QueueLimits) -> Arc<Self> {
        Arc::new(Self {
            conns: Mutex::new(Vec::new()),
            changed: Notify::new(),
            queue: Semaphore::new(limits.max_waiting),
            limits,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<OriginConn>>> {
        // A panic while holding this lock cannot leave the Vec half-updated (every critical
        // section is a single push, retain or scan), so a poisoned lock is still consistent.
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a connection; routing may use it at once.
    pub fn add(&self, conn: Arc<OriginConn>) {
        tracing::info!(
            conn = conn.id,
            mechanism = %conn.mechanism,
            origin = %conn.admission.identity,
            peer = %conn.peer,
            scopes = ?conn.scopes,
            capacity = conn.capacity(),
            "origin connection registered"
        );
        self.lock().push(conn);
        self.changed.notify_waiters();
    }

    /// Removes a connection (it closed). Requests in flight on it fail on their own.
    pub fn remove(&self, id: u64) {
        let mut conns = self.lock();
        if let Some(c) = conns.iter().find(|c| c.id == id) {
            c.mark_closed();
            c.removed.store(true, Ordering::Release);
            c.gone.notify_waiters();
            tracing::info!(conn = id, "origin connection closed");
        }
        conns.retain(|c| c.id != id);
        drop(conns);
        self.changed.notify_waiters();
    }

    /// Drains every connection `keep` rejects: no new requests are routed to it, requests
    /// in flight finish (for at most `grace`), then the connection is closed. Returns how
    /// many were drained.
    pub fn drain_unless(&self, keep: impl Fn(&OriginConn) -> bool, grace: Duration) -> usize {
        let doomed: Vec<Arc<OriginConn>> =
            self.lock().iter().filter(|c| !keep(c)).cloned().collect();
        for conn in &doomed {
            conn.mark_closed();
            tracing::warn!(
                conn = conn.id,
                origin = %conn.admission.identity,
                "grant removed or narrowed: draining the connection"
            );
            let conn = conn.clone();
            tokio::spawn(async move {
                let deadline = tokio::time::Instant::now() + grace;
                while conn.outstanding() > 0 && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                conn.driver.abort();
            });
        }
        self.changed.notify_waiters();
        doomed.len()
    }

    /// Number of registered connections.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no origin is connected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A snapshot of the registered connections.
    pub fn snapshot(&self) -> Vec<Arc<OriginConn>> {
        self.lock().clone()
    }

    fn pick(&self, target: &RequestTarget, avoid: Option<u64>) -> Pick {
        let conns = self.lock();
        let mut best_spec = None;
        for c in conns.iter() {
            if !c.is_usable() || Some(c.id) == avoid {
                continue;
            }
            if let Some(s) = c.best_match(target) {
                best_spec = best_spec.max(Some(s));
            }
        }
        let Some(spec) = best_spec else {
            return Pick::NoRoute;
        };
        // Least outstanding requests relative to capacity, over the most specific scope.
        // Capacity is read once per candidate: for HTTP/2 it asks the connection.
        let mut candidates: Vec<(&Arc<OriginConn>, usize, usize)> = conns
            .iter()
            .filter(|c| c.is_usable() && Some(c.id) != avoid)
            .filter(|c| c.best_match(target) == Some(spec))
            .map(|c| (c, c.outstanding(), c.capacity().max(1)))
            .filter(|(_, out, cap)| out < cap)
            .collect();
        candidates.sort_by(|(_, oa, ca), (_, ob, cb)| {
            (*oa as u128 * *cb as u128).cmp(&(*ob as u128 * *ca as u128))
        });
        for (c, _, _) in candidates {
            if c.try_reserve() {
                return Pick::Got(c.clone());
            }
        }
        Pick::Busy
    }

    /// Reserves a slot on the best connection for `target`, waiting in the queue if all are
    /// busy. `avoid` skips one connection (a retry after it failed to take the request).
    pub async fn acquire(
        self: &Arc<Self>,
        target: &RequestTarget,
        avoid: Option<u64>,
    ) -> Result<Reservation, RouteError> {
        let deadline = tokio::time::Instant::now() + self.limits.max_wait;
        let mut permit = None;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.pick(target, avoid) {
                Pick::Got(conn) => {
                    return Ok(Reservation {
                        conn,
                        registry: self.clone(),
                    })
                }
                // A request that is already waiting keeps waiting when its origin's last
                // connection drops: the origin reconnects, and the deadline still bounds it.
                Pick::NoRoute if permit.is_none() => return Err(RouteError::NoOrigin),
                Pick::NoRoute | Pick::Busy => {}
            }
            if permit.is_none() {
                permit = Some(
                    self.queue
                        .try_acquire()
                        .map_err(|_| RouteError::QueueFull)?,
                );
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(RouteError::QueueTimeout);
            }
        }
    }
}
