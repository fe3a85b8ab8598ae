//! The crate's errors: why a credential is not accepted ([`AuthError`], 401 or 403) and why
//! an authenticated origin may not have what it asked for ([`Forbidden`], 403).

use ptth_core::SerializedOrigin;

/// Why an origin's credential was not accepted.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthError {
    /// No credential at all: the gateway answers 401.
    #[error("no credential was presented")]
    Missing,
    /// The credential is not of a form this gateway understands: 401.
    #[error("the credential is malformed: {0}")]
    Malformed(&'static str),
    /// A well-formed credential that no grant accepts: 401.
    #[error("the credential is not accepted")]
    Rejected,
    /// The answer to the authorisation challenge does not verify (a replay, another TLS
    /// connection, an altered scope, or the wrong key): 401.
    #[error("the challenge signature does not verify")]
    SignatureInvalid,
    /// The client certificate could not be read: 401.
    #[error("the client certificate is unusable: {0}")]
    BadCertificate(String),
    /// The credential is valid but does not allow what was asked: 403.
    #[error(transparent)]
    Forbidden(#[from] Forbidden),
}

impl AuthError {
    /// The HTTP status a gateway answers with: 401 when the origin is not authenticated,
    /// 403 when it is but asked for more than its grants allow.
    pub fn status(&self) -> http::StatusCode {
        match self {
            AuthError::Forbidden(_) => http::StatusCode::FORBIDDEN,
            _ => http::StatusCode::UNAUTHORIZED,
        }
    }
}

/// Why an authenticated origin may not have what it asked for: the gateway answers 403.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Forbidden {
    /// Nothing was asked for.
    #[error("no origin was requested")]
    NoOrigins,
    /// More origins or path prefixes than one connection may register.
    #[error("at most {limit} {what} per connection; {claimed} were claimed")]
    TooMany {
        /// `origins` or `path prefixes`.
        what: &'static str,
        /// The limit.
        limit: usize,
        /// How many the origin asked for.
        claimed: usize,
    },
    /// A wildcard or any-origin grant allows the origin, but another grant names its host
    /// (for a wildcard origin, a host one label under its parent) exactly, and exact names
    /// win.
    #[error("{0}: its host (for a wildcard, a host it covers) is named exactly by a grant, so only a grant that names it may register it (a wildcard or \"*\" grant may not)")]
    NamedElsewhere(SerializedOrigin),
    /// No grant of this credential allows the origin.
    #[error("the credential may not register {0}")]
    Origin(SerializedOrigin),
    /// Grants allow the origin, but none of them the path prefix (with the other prefixes).
    #[error("the credential may not register path prefix {prefix:?} on {origin}")]
    PathPrefix {
        /// The origin.
        origin: SerializedOrigin,
        /// The requested prefix outside the grant.
        prefix: String,
    },
    /// A requested path prefix is not a usable prefix (no leading `/`, a dot segment).
    #[error("{0}")]
    BadPathPrefix(String),
    /// An ORIGIN frame entry that the client certificate does not cover.
    #[error("the client certificate does not cover ORIGIN entry {0:?}")]
    OriginEntry(String),
    /// An ORIGIN frame entry that is not an origin.
    #[error("invalid ORIGIN entry {entry:?}: {why}")]
    BadOriginEntry {
        /// The entry.
        entry: String,
        /// What is wrong with it.
        why: String,
    },
    /// The client certificate could not be read.
    #[error("{0}")]
    Certificate(String),
    /// An origin that claimed no scope: no grant its certificate matched allows any origin
    /// the certificate names.
    #[error(
        "no grant of this client certificate allows an origin it names (certificate names: {0})"
    )]
    NoCertificateOrigin(String),
    /// An origin that claimed no scope presented a certificate with more names than are read.
    #[error("the client certificate names {0} hosts; at most {MAX_CERTIFICATE_NAMES} are read to derive a scope")]
    TooManyCertificateNames(usize),
}

/// At most this many certificate names are turned into scopes
/// ([`scopes_from_certificate`](crate::scopes_from_certificate)).
pub const MAX_CERTIFICATE_NAMES: usize = 64;

impl Forbidden {
    /// Always 403: the origin is authenticated but not allowed this.
    pub fn status(&self) -> http::StatusCode {
        http::StatusCode::FORBIDDEN
    }
}
