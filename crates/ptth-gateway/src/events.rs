//! Connection events: origin connections registered, draining and closed, for an embedding
//! application that keeps its own service registry or metrics ([`crate::Gateway::events`]).
//!
//! Events go out on a [`tokio::sync::broadcast`] channel of [`EVENT_BUFFER`] events: sending
//! never blocks the gateway, and a receiver that falls that far behind loses the oldest
//! (its next `recv` says how many, `RecvError::Lagged`).

use ptth_core::{CloseReason, DrainSource, Mechanism, Scope};
use std::net::SocketAddr;
use tokio::sync::broadcast;

/// Events a receiver may fall behind by before it loses the oldest.
pub const EVENT_BUFFER: usize = 1024;

/// Something that happened to an origin connection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventKind {
    /// Admitted and routable.
    Registered,
    /// No new requests go to it; those in flight finish. Seen when the gateway notices: at
    /// once for a drain the gateway starts (reload, stop), at the next routing decision or
    /// close for an origin's GOAWAY.
    Draining(DrainSource),
    /// Gone from the registry, with why it closed when known.
    Closed(Option<CloseReason>),
}

/// An origin connection's event, with what identifies the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionEvent {
    /// What happened.
    pub kind: EventKind,
    /// The connection's id, as in the gateway's logs.
    pub id: u64,
    /// How it was set up.
    pub mechanism: Mechanism,
    /// Who the origin authenticated as (grant names, or the custom authoriser's identity).
    pub identity: String,
    /// The scopes it serves.
    pub scopes: Vec<Scope>,
    /// The origin's address as the gateway saw it.
    pub peer: SocketAddr,
}

/// Where a registry's events go.
pub(crate) type Events = broadcast::Sender<ConnectionEvent>;

/// A new event channel.
pub(crate) fn channel() -> Events {
    broadcast::channel(EVENT_BUFFER).0
}
