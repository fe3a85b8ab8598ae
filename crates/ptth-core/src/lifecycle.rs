//! The lifecycle of a reversed connection, shared by every mechanism: where it is (setting
//! up, taking requests, draining, closed), who started a drain, and why it closed.
//!
//! The gateway keeps one per registered origin connection (`OriginConn::state` in
//! `ptth-gateway`): routing sends requests only to an `Active` one, and the log line that
//! says a connection closed gives the [`CloseReason`] and, after a drain, its
//! [`DrainSource`].

use std::fmt;

/// Where a connection is in its life. Read it through [`Lifecycle::state`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectionState {
    /// The transport is up; the setup exchange (or handshake) has not finished.
    Setup,
    /// The gateway may send requests.
    Active,
    /// Shutting down: in-flight requests finish, no new ones are sent.
    Draining,
    /// Gone.
    Closed,
}

/// Who started a drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DrainSource {
    /// We decided to drain (shutdown, rebalancing).
    Local,
    /// The peer sent GOAWAY or `Connection: close`.
    Peer,
    /// The credential that admitted the connection no longer does: the grants were
    /// reloaded and refuse it.
    Revoked,
}

impl fmt::Display for DrainSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Local => "local",
            Self::Peer => "peer",
            Self::Revoked => "revoked",
        })
    }
}

/// Why a connection closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseReason {
    /// A drain finished, or an orderly close.
    Graceful,
    /// The setup exchange failed.
    SetupFailed,
    /// We closed it because of an error on our side or a protocol violation by the peer.
    LocalError,
    /// The peer closed it with an error.
    PeerError,
    /// The transport went away (reset, timeout, EOF without close).
    TransportLost,
    /// An upgrade (a WebSocket after HTTP/1.1 `101`) took the connection over: it carries
    /// that one exchange's bytes and no further requests.
    Upgraded,
    /// A drain's grace period ended with requests still in flight; they were cut.
    DrainExpired,
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Graceful => "graceful",
            Self::SetupFailed => "setup failed",
            Self::LocalError => "local error",
            Self::PeerError => "peer error",
            Self::TransportLost => "transport lost",
            Self::Upgraded => "upgraded",
            Self::DrainExpired => "drain expired",
        })
    }
}

/// An input that is not allowed in the current state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{event} is not allowed in state {state:?}")]
#[non_exhaustive]
pub struct LifecycleError {
    /// The state the connection was in.
    pub state: ConnectionState,
    /// The rejected input.
    pub event: &'static str,
}

/// The state machine of one reversed connection.
///
/// ```text
///              handle_setup_complete       (or Lifecycle::active)
///    Setup ───────────────────────────▶ Active
///      │                                  │
///      │                                  │ handle_drain (local, or peer GOAWAY /
///      │                                  ▼              Connection: close)
///      │                              Draining ◀──┐
///      │                                  │   └───┘ handle_drain (again: no-op)
///      │ handle_closed                    │ handle_closed
///      └───────────────▶ Closed ◀─────────┘
///                          ▲
///                          └── handle_closed from Active, too
/// ```
///
/// Only `Active` accepts new requests. Any other input returns [`LifecycleError`] and
/// leaves the state unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lifecycle {
    state: ConnectionState,
    drain_source: Option<DrainSource>,
    close_reason: Option<CloseReason>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new()
    }
}

impl Lifecycle {
    /// A connection whose setup has just begun.
    pub fn new() -> Self {
        Self {
            state: ConnectionState::Setup,
            drain_source: None,
            close_reason: None,
        }
    }

    /// A connection whose setup already completed: `Active`. (The gateway tracks a
    /// connection from its registration on, which follows a completed setup.)
    pub fn active() -> Self {
        Self {
            state: ConnectionState::Active,
            drain_source: None,
            close_reason: None,
        }
    }

    /// The current state.
    pub fn state(&self) -> ConnectionState {
        self.state
    }

    /// Whether the gateway may send a new request on this connection.
    pub fn can_accept_requests(&self) -> bool {
        self.state == ConnectionState::Active
    }

    /// Whether the connection is closed.
    pub fn is_closed(&self) -> bool {
        self.state == ConnectionState::Closed
    }

    /// Who started the drain, once draining.
    pub fn drain_source(&self) -> Option<DrainSource> {
        self.drain_source
    }

    /// Why it closed, once closed.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.close_reason
    }

    fn illegal(&self, event: &'static str) -> LifecycleError {
        LifecycleError {
            state: self.state,
            event,
        }
    }

    /// The setup exchange succeeded: `Setup` → `Active`.
    pub fn handle_setup_complete(&mut self) -> Result<(), LifecycleError> {
        match self.state {
            ConnectionState::Setup => {
                self.state = ConnectionState::Active;
                Ok(())
            }
            _ => Err(self.illegal("setup complete")),
        }
    }

    /// Start draining: `Active` → `Draining`. A second drain (say, a peer GOAWAY after
    /// our own) is allowed and keeps the first source.
    pub fn handle_drain(&mut self, source: DrainSource) -> Result<(), LifecycleError> {
        match self.state {
            ConnectionState::Active => {
                self.state = ConnectionState::Draining;
                self.drain_source = Some(source);
                Ok(())
            }
            ConnectionState::Draining => Ok(()),
            _ => Err(self.illegal("drain")),
        }
    }

    /// The connection is gone: any state but `Closed` → `Closed`.
    pub fn handle_closed(&mut self, reason: CloseReason) -> Result<(), LifecycleError> {
        match self.state {
            ConnectionState::Closed => Err(self.illegal("close")),
            _ => {
                self.state = ConnectionState::Closed;
                self.close_reason = Some(reason);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn happy_path() {
        let mut l = Lifecycle::new();
        assert_eq!(l.state(), ConnectionState::Setup);
        assert!(!l.can_accept_requests());
        l.handle_setup_complete().unwrap();
        assert!(l.can_accept_requests());
        l.handle_drain(DrainSource::Peer).unwrap();
        assert_eq!(l.state(), ConnectionState::Draining);
        assert!(!l.can_accept_requests());
        l.handle_drain(DrainSource::Local).unwrap();
        assert_eq!(l.drain_source(), Some(DrainSource::Peer));
        l.handle_closed(CloseReason::Graceful).unwrap();
        assert!(l.is_closed());
        assert_eq!(l.close_reason(), Some(CloseReason::Graceful));
    }

    #[test]
    fn illegal_transitions() {
        let mut l = Lifecycle::new();
        assert_eq!(
            l.handle_drain(DrainSource::Local),
            Err(LifecycleError {
                state: ConnectionState::Setup,
                event: "drain"
            })
        );
        l.handle_setup_complete().unwrap();
        assert!(l.handle_setup_complete().is_err());
        l.handle_closed(CloseReason::TransportLost).unwrap();
        assert!(l.handle_closed(CloseReason::Graceful).is_err());
        assert!(l.handle_drain(DrainSource::Peer).is_err());
        assert!(l.handle_setup_complete().is_err());
        assert_eq!(l.close_reason(), Some(CloseReason::TransportLost));
        let mut l = Lifecycle::new();
        l.handle_closed(CloseReason::SetupFailed).unwrap();
        assert_eq!(l.state(), ConnectionState::Closed);
    }

    #[test]
    fn a_registered_connection_starts_active_and_keeps_its_first_drain_source() {
        let mut l = Lifecycle::active();
        assert!(l.can_accept_requests());
        assert!(l.handle_setup_complete().is_err());
        l.handle_drain(DrainSource::Revoked).unwrap();
        l.handle_drain(DrainSource::Peer).unwrap();
        assert_eq!(l.drain_source(), Some(DrainSource::Revoked));
        l.handle_closed(CloseReason::DrainExpired).unwrap();
        assert_eq!(l.close_reason(), Some(CloseReason::DrainExpired));
        assert_eq!(l.drain_source(), Some(DrainSource::Revoked));
        let mut u = Lifecycle::active();
        u.handle_closed(CloseReason::Upgraded).unwrap();
        assert_eq!(u.drain_source(), None);
        assert_eq!(CloseReason::Upgraded.to_string(), "upgraded");
    }
}
