//! Origin connections still in setup (accepted, not yet registered): the cap on them, in
//! total and per source address, shared by the TCP and QUIC tunnel listeners; each one's
//! place and deadline ([`SetupState`]); and how a setup that failed is told ([`SetupFailure`]).
//!
//! Anyone on the internet can open a connection to the tunnel port, and until a setup is
//! admitted the gateway does not know who it is. A connection in setup holds a file
//! descriptor (shared with the public listeners), a task and TLS state for up to the setup
//! timeout; this cap bounds how many such connections exist at once, so a flood of silent
//! peers is turned away at accept instead of starving honest origins and public clients.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::watch;
use tokio::time::Instant;

/// Counts connections in setup; [`PendingSetups::try_enter`] hands out one
/// [`PendingSetup`] guard per connection, released when it is dropped.
#[derive(Debug, Clone)]
pub(crate) struct PendingSetups {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    max_total: usize,
    max_per_ip: usize,
    state: Mutex<State>,
    refused: AtomicU64,
}

/// The map holds one entry per source address with a connection in setup, so it has at
/// most `max_total` entries: an entry is removed when its count reaches zero.
#[derive(Debug, Default)]
struct State {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Why a connection was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Full {
    /// `--max-pending-setups` connections are in setup.
    Total,
    /// `--max-pending-setups-per-ip` connections from this address are in setup.
    PerIp,
}

impl std::fmt::Display for Full {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Full::Total => "too many origin connections in setup (--max-pending-setups)",
            Full::PerIp => {
                "too many origin connections in setup from one address (--max-pending-setups-per-ip)"
            }
        })
    }
}

impl PendingSetups {
    /// A counter allowing `max_total` connections in setup, `max_per_ip` from one address.
    pub(crate) fn new(max_total: usize, max_per_ip: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                max_total,
                max_per_ip,
                state: Mutex::new(State::default()),
                refused: AtomicU64::new(0),
            }),
        }
    }

    /// Counts a new connection from `ip` in setup, or says which cap it would exceed.
    pub(crate) fn try_enter(&self, ip: IpAddr) -> Result<PendingSetup, Full> {
        // An IPv4 peer on a dual-stack socket arrives as ::ffff:a.b.c.d: count it as a.b.c.d.
        let ip = ip.to_canonical();
        let mut st = self.inner.state();
        let full = if st.total >= self.inner.max_total {
            Some(Full::Total)
        } else if st.per_ip.get(&ip).copied().unwrap_or(0) >= self.inner.max_per_ip {
            Some(Full::PerIp)
        } else {
            None
        };
        if let Some(full) = full {
            self.inner.refused.fetch_add(1, Ordering::Relaxed);
            return Err(full);
        }
        st.total += 1;
        *st.per_ip.entry(ip).or_insert(0) += 1;
        Ok(PendingSetup {
            inner: self.inner.clone(),
            ip,
        })
    }

    /// Whether half the total cap or more is in use.
    pub(crate) fn under_pressure(&self) -> bool {
        self.inner.state().total.saturating_mul(2) >= self.inner.max_total
    }

    /// How many connections were turned away since start.
    pub(crate) fn refused(&self) -> u64 {
        self.inner.refused.load(Ordering::Relaxed)
    }

    /// Connections in setup now, and how many source addresses they come from.
    #[cfg(test)]
    fn counts(&self) -> (usize, usize) {
        let st = self.inner.state();
        (st.total, st.per_ip.len())
    }
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One connection in setup; dropping it (registration, refusal, timeout, close) frees its
/// place.
#[derive(Debug)]
pub(crate) struct PendingSetup {
    inner: Arc<Inner>,
    ip: IpAddr,
}

impl Drop for PendingSetup {
    fn drop(&mut self) {
        let mut st = self.inner.state();
        st.total = st.total.saturating_sub(1);
        if let Some(n) = st.per_ip.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                st.per_ip.remove(&self.ip);
            }
        }
    }
}

/// One origin connection's setup: its deadline, and its place among the connections in
/// setup, given up when a setup on it is registered (or when every clone is dropped). A
/// connection that carries tunnels (HTTP/2 or HTTP/3 extended CONNECT, PTTH -00) lives on
/// after its first registration; the deadline no longer applies to it then.
#[derive(Debug, Clone)]
pub(crate) struct SetupState {
    /// Accept + `--setup-timeout`.
    pub deadline: Instant,
    slot: Arc<Mutex<Option<PendingSetup>>>,
    admitted: Arc<watch::Sender<bool>>,
}

impl SetupState {
    /// The setup of the connection holding `slot`, to be registered by `deadline`.
    pub(crate) fn new(slot: PendingSetup, deadline: Instant) -> Self {
        let (admitted, _) = watch::channel(false);
        SetupState {
            deadline,
            slot: Arc::new(Mutex::new(Some(slot))),
            admitted: Arc::new(admitted),
        }
    }

    /// A setup on this connection was registered: free its place, lift its deadline.
    pub(crate) fn registered(&self) {
        drop(self.slot.lock().unwrap_or_else(|e| e.into_inner()).take());
        self.admitted.send_replace(true);
    }

    /// Resolves at the deadline unless a setup was registered by then; then never.
    pub(crate) async fn expired(&self) {
        let mut admitted = self.admitted.subscribe();
        let registered = matches!(
            tokio::time::timeout_at(self.deadline, admitted.wait_for(|a| *a)).await,
            Ok(Ok(_))
        );
        if registered {
            std::future::pending::<()>().await;
        }
    }
}

/// Why an origin connection ended before it was registered.
#[derive(Debug)]
pub(crate) enum SetupFailure {
    /// The peer was silent, slow, or left (a load balancer's health check, a scanner, a
    /// flood): closed and logged at debug, never warn.
    Quiet(String),
    /// A real refusal (a bad credential, a bad setup, an unknown protocol): logged at warn
    /// with its reason.
    Refused(String),
}

impl From<String> for SetupFailure {
    fn from(reason: String) -> Self {
        SetupFailure::Refused(reason)
    }
}

impl From<&str> for SetupFailure {
    fn from(reason: &str) -> Self {
        SetupFailure::Refused(reason.to_string())
    }
}

impl SetupFailure {
    /// An I/O error from the peer: a peer that left is quiet, anything else a refusal.
    pub(crate) fn io(what: &str, e: &std::io::Error) -> Self {
        use std::io::ErrorKind::*;
        let reason = format!("{what}: {e}");
        match e.kind() {
            UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe | TimedOut
            | NotConnected => SetupFailure::Quiet(reason),
            _ => SetupFailure::Refused(reason),
        }
    }

    /// The deadline passed during `stage`.
    pub(crate) fn late(stage: &str) -> Self {
        SetupFailure::Quiet(format!("{stage} before the setup deadline"))
    }

    /// Logs the failure at the level its kind deserves.
    pub(crate) fn log(&self, peer: SocketAddr, transport: &str) {
        match self {
            SetupFailure::Quiet(reason) => {
                tracing::debug!(%peer, %transport, %reason, "origin connection closed during setup")
            }
            SetupFailure::Refused(reason) => {
                tracing::warn!(%peer, %transport, %reason, "origin connection refused")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn caps_hold_and_places_come_back() {
        let p = PendingSetups::new(3, 2);
        let a1 = p.try_enter(ip("192.0.2.1")).unwrap();
        let a2 = p.try_enter(ip("192.0.2.1")).unwrap();
        // The same address through a dual-stack socket is the same address.
        assert_eq!(
            p.try_enter(ip("::ffff:192.0.2.1")).unwrap_err(),
            Full::PerIp
        );
        let b1 = p.try_enter(ip("192.0.2.2")).unwrap();
        assert_eq!(p.try_enter(ip("192.0.2.3")).unwrap_err(), Full::Total);
        assert_eq!(p.refused(), 2);
        drop(a1);
        let a3 = p.try_enter(ip("192.0.2.1")).unwrap();
        drop((a2, a3, b1));
        assert_eq!(p.counts(), (0, 0), "no entry outlives its connections");
    }

    #[test]
    fn the_map_never_holds_more_addresses_than_the_total_cap() {
        let p = PendingSetups::new(16, 4);
        let mut held = Vec::new();
        for i in 0..1000u32 {
            let addr = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            if let Ok(g) = p.try_enter(addr) {
                held.push(g);
            }
            if i % 3 == 0 {
                held.pop();
            }
            assert!(p.counts().1 <= 16);
        }
        held.clear();
        assert_eq!(p.counts(), (0, 0));
    }
}
