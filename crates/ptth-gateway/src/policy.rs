//! Policy an embedding application plugs into the gateway ([`crate::GatewayBuilder`]): who may
//! register what ([`Authorise`]), and which registered connection serves a request
//! ([`Route`]).
//!
//! Without either, the gateway behaves as the binary does: its grants
//! ([`ptth_auth::Grants`], which implement [`Authorise`]) decide, and routing takes the
//! least outstanding requests relative to capacity.

use http::{HeaderValue, StatusCode};
use ptth_auth::{ChallengeProof, Presented};
use ptth_core::{Mechanism, RequestTarget, Scope, SerializedOrigin};
use rustls::pki_types::CertificateDer;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

/// A boxed future that is `Send`, as [`Authorise::authorise`] returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Decides whether an origin may register, and for which scopes.
///
/// Called once per origin connection (or setup request), after the connection's TLS or
/// QUIC handshake and before anything is routed to it, within the setup deadline
/// (`setup_timeout`): an authoriser that takes longer fails the setup. A refusal's reason
/// reaches the origin in the 401/403 body of a setup request (`ptth-h1`, `ptth-h2`, the
/// CONNECT and OPTIONS setups); mechanisms reversed by ALPN alone (Potato, draft-bt) have no
/// answer to carry it, so there it is in the gateway's log and the connection closes.
///
/// With a custom authoriser, [`crate::Gateway::reload`] re-reads certificates but re-checks
/// no connection: the authoriser's decision stands for the connection's life.
pub trait Authorise: Send + Sync + 'static {
    /// Authorises `request`, or refuses it with a reason.
    fn authorise<'a>(
        &'a self,
        request: &'a OriginRequest<'a>,
    ) -> BoxFuture<'a, Result<Authorised, Refused>>;
}

/// What an origin presented when it asked to register.
#[non_exhaustive]
pub struct OriginRequest<'a> {
    /// How the connection was set up.
    pub mechanism: Mechanism,
    /// The origin's address as the gateway saw it.
    pub peer: SocketAddr,
    /// The `Authorization` value it presented (`Bearer …` or `Basic …`), if any.
    pub authorization: Option<&'a HeaderValue>,
    /// The client certificate chain of its TLS or QUIC handshake, if it sent one. The TLS
    /// layer verified it against `client_ca`/`client_webpki` or a grant's pinned key; with
    /// none of those configured, the gateway asks for no certificate.
    pub client_certificates: Option<&'a [CertificateDer<'static>]>,
    /// The origins it asks to serve (empty when it claimed none and relies on the names its
    /// client certificate carries).
    pub origins: &'a [SerializedOrigin],
    /// The path prefixes it asks for (`/` when it named none).
    pub path_prefixes: &'a [String],
    /// A signed answer to the authorisation challenge, checked by the grants.
    pub(crate) challenge: Option<ChallengeProof<'a>>,
}

impl std::fmt::Debug for OriginRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the credential itself.
        f.debug_struct("OriginRequest")
            .field("mechanism", &self.mechanism)
            .field("peer", &self.peer)
            .field("authorization", &self.authorization.map(|_| "<redacted>"))
            .field(
                "client_certificates",
                &self.client_certificates.map(<[_]>::len),
            )
            .field("origins", &self.origins)
            .field("path_prefixes", &self.path_prefixes)
            .finish()
    }
}

impl<'a> OriginRequest<'a> {
    /// The token of an `Authorization: Bearer <token>` credential, if that is what the
    /// origin presented.
    pub fn bearer_token(&self) -> Option<&'a str> {
        let value = self.authorization?.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim())
            .filter(|t| !t.is_empty())
    }

    /// Every scope the origin asked for: each requested origin under each path prefix.
    /// Fails on a prefix that is not a path (`/…`).
    pub fn requested_scopes(&self) -> Result<Vec<Scope>, Refused> {
        let mut scopes = Vec::with_capacity(self.origins.len() * self.path_prefixes.len());
        for origin in self.origins {
            for prefix in self.path_prefixes {
                scopes.push(
                    Scope::from_origin(origin, prefix)
                        .map_err(|e| Refused::forbidden(format!("{origin}{prefix}: {e}")))?,
                );
            }
        }
        Ok(scopes)
    }

    /// What the grants authenticate.
    pub(crate) fn presented(&self) -> Presented<'a> {
        Presented {
            authorization: self.authorization,
            peer_certs: self.client_certificates,
            challenge_answer: self.challenge,
        }
    }
}

/// An authoriser's yes: who the origin is (for logs and connection events) and the scopes
/// requests may be routed to it for.
#[derive(Debug, Clone)]
pub struct Authorised {
    pub(crate) identity: String,
    pub(crate) scopes: Vec<Scope>,
    /// What the grants matched and what the credential proved, when
    /// [`ptth_auth::Grants`] decided (a reload re-checks those connections).
    pub(crate) by_grants: Option<(Vec<String>, ptth_auth::Proven)>,
}

impl Authorised {
    /// Authorised as `identity` (a name for logs and events; never a secret) for `scopes`.
    pub fn new(identity: impl Into<String>, scopes: Vec<Scope>) -> Self {
        Self {
            identity: identity.into(),
            scopes,
            by_grants: None,
        }
    }

    /// The identity given.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The scopes granted.
    pub fn scopes(&self) -> &[Scope] {
        &self.scopes
    }
}

/// An authoriser's no, with the reason the origin (and the log) is given.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Refused {
    /// `401 Unauthorized` (the credential was not recognised) or `403 Forbidden` (it may
    /// not register what it asked for): the status a setup request is answered with.
    pub status: StatusCode,
    /// Why, in words the origin's operator can act on. Never put a secret here.
    pub reason: String,
}

impl Refused {
    /// The credential is missing or not recognised (401).
    pub fn unauthenticated(reason: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            reason: reason.into(),
        }
    }

    /// The credential is known but may not register what it asked for (403).
    pub fn forbidden(reason: impl Into<String>) -> Self {
        Self {
            status: StatusCode::FORBIDDEN,
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for Refused {}

/// Picks which registered connection serves a request.
///
/// Called on every request, on the request's task, while the registry's index is read:
/// it must be quick and must not block. Connections that cannot take the request (draining,
/// closed, full, or for another scope) are not among the candidates; only those with the
/// best-ranked matching scope are ([`Scope::rank`]: the request's scheme, the longest path
/// prefix, an explicit port).
pub trait Route: Send + Sync + 'static {
    /// The index in `candidates` of the connection to use (never empty); `None`, or an
    /// index out of range, takes the default: least outstanding relative to capacity.
    fn pick(&self, request: &RequestTarget, candidates: &[Candidate<'_>]) -> Option<usize>;
}

/// One connection routing may pick, as a [`Route`] sees it.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub(crate) id: u64,
    pub(crate) mechanism: Mechanism,
    pub(crate) outstanding: usize,
    pub(crate) capacity: usize,
    pub(crate) identity: &'a str,
    pub(crate) peer: SocketAddr,
    pub(crate) scopes: &'a [Scope],
}

impl Candidate<'_> {
    /// The connection's id (as in logs and [`crate::ConnectionEvent`]s).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// How the connection was set up.
    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// Requests in flight on it now.
    pub fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// Requests it can carry at once (its HTTP/2 or HTTP/3 stream limit, 1 for HTTP/1.1).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Who the origin authenticated as ([`Authorised::identity`]).
    pub fn identity(&self) -> &str {
        self.identity
    }

    /// The origin's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The scopes it serves.
    pub fn scopes(&self) -> &[Scope] {
        self.scopes
    }
}

/// An embedding application's hook, held where the gateway's types are `Debug`.
pub(crate) struct Hook<T: ?Sized>(pub(crate) std::sync::Arc<T>);

impl<T: ?Sized> std::fmt::Debug for Hook<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hook(custom)")
    }
}
