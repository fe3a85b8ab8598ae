//! Scopes: which public requests the gateway may route to a reversed connection.
//!
//! Routing model: the gateway routes on host name, like an nginx `server_name`, plus
//! the scheme, an optional port and a path prefix. A [`Scope`] comes from a grant (what the
//! authenticated origin may serve); a [`RequestTarget`] from the public request and the
//! listener it arrived on ([`Arrival`]).
//!
//! Scheme and port rules (docs/operations.md "Routing"):
//! - a request that arrived over TLS or QUIC (`https`) never matches an `http://` scope;
//! - a request that arrived in cleartext (`http`) matches `http://` scopes, and `https://`
//!   scopes only as a fallback ([`Arrival::https_fallback`]), ranked below every `http://`
//!   match;
//! - a scope with an explicit non-default port matches only requests for that port; a
//!   default-port scope matches requests with no port, the default port of its scheme or
//!   of the request's scheme, or the port of the listener the request arrived on.
//!
//! Paths are compared after a conservative normalisation: percent-encoded unreserved
//! characters are decoded and other percent-encodings get uppercase hex (RFC 3986
//! §6.2.2), and any dot segment (`.`, `..`, also as `%2E`) is rejected outright, even
//! when hidden behind an encoded slash (`%2F`) or backslash (`%5C`) that an upstream
//! might decode. Encoded slashes are otherwise kept, and never match a prefix boundary.

use std::fmt;

use http::header::{self, HeaderMap};
use http::Uri;

use crate::origin::{self, SerializedOrigin};
use crate::pct;
use crate::setup::RequestHead;

/// Why a scope or request target could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScopeError {
    /// The host is not a DNS name or IP literal.
    #[error("invalid host {0:?}")]
    BadHost(String),
    /// The port is not a number in 1..=65535.
    #[error("invalid port {0:?}")]
    BadPort(String),
    /// Neither the URI nor a `Host` field names the host.
    #[error("request has no host")]
    MissingHost,
    /// More than one `Host` field line.
    #[error("request has more than one Host field")]
    MultipleHost,
    /// The `Host` field and the URI authority disagree.
    #[error("Host field {host:?} conflicts with URI authority {authority:?}")]
    ConflictingHost {
        /// The `Host` field.
        host: String,
        /// The URI authority.
        authority: String,
    },
    /// A `%` not followed by two hex digits.
    #[error("malformed percent-encoding in path")]
    BadPercentEncoding,
    /// A `.` or `..` segment, possibly encoded.
    #[error("path contains a dot segment")]
    DotSegment,
    /// A literal backslash, which some servers treat as `/`.
    #[error("path contains a backslash")]
    Backslash,
    /// The path is not in origin form (for example `*`), or a prefix has `?` or `#`.
    #[error("invalid path {0:?}")]
    BadPath(String),
}

/// A routing scope: scheme, host, optional port, path prefix.
///
/// The host is a DNS name or IP literal, or a wildcard `*.parent` ([`Scope::wildcard`])
/// that matches a request host with exactly one more label, as a certificate's wildcard
/// name does (RFC 6125 §6.4.3: "the client SHOULD NOT attempt to match a presented
/// identifier in which the wildcard character comprises a label other than the left-most
/// label", and `*` matches one label only).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope {
    scheme: String,
    host: String,
    port: Option<u16>,
    path_prefix: String,
}

/// How well a scope fits a request; larger is better. Compare to prefer an exact host over
/// a wildcard host whatever the paths (exact names win over wildcards), then a scope of the
/// request's own scheme (over an `https://` fallback for a cleartext request), then the
/// longest matching path prefix, then a scope with an explicit port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Specificity {
    // Field order is the comparison order (derived `Ord`).
    exact_host: bool,
    scheme_exact: bool,
    path_len: usize,
    port_specific: bool,
}

/// How a public request reached the gateway: what routing may rely on for its scheme and
/// port. The request's own `:scheme` is not trusted for this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Arrival {
    /// Whether it arrived over TLS or QUIC (`https`) rather than cleartext (`http`).
    pub secure: bool,
    /// The port clients address the listener by (its local port).
    pub listener_port: Option<u16>,
    /// For a cleartext request: whether `https://` scopes serve it when no `http://`
    /// scope does (a TLS terminator in front of the cleartext listener).
    pub https_fallback: bool,
}

impl Default for Arrival {
    /// Until told otherwise a request counts as `https`, the strict case: it never reaches
    /// an `http://` scope.
    fn default() -> Self {
        Self {
            secure: true,
            listener_port: None,
            https_fallback: false,
        }
    }
}

/// The routing-relevant part of a public request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestTarget {
    host: String,
    port: Option<u16>,
    path: String,
    arrival: Arrival,
}

fn parse_authority(text: &str) -> Result<(String, Option<u16>), ScopeError> {
    let bad_host = || ScopeError::BadHost(text.to_owned());
    let (host, port) = origin::split_host_port(text).map_err(|_| bad_host())?;
    let host = origin::parse_host(host).map_err(|_| bad_host())?;
    // FQDNs with and without the root label name the same host (RFC 1034 §3.1).
    let host = match host.strip_suffix('.') {
        Some(h) if !h.is_empty() => h.to_owned(),
        _ => host,
    };
    let port = match port {
        None => None,
        Some(p) => Some(origin::parse_port(p).map_err(|_| ScopeError::BadPort(p.to_owned()))?),
    };
    Ok((host, port))
}

/// Normalises a path (no query) for comparison; see the module documentation.
fn normalize_path(raw: &str) -> Result<String, ScopeError> {
    // Every request passes here, and most paths have nothing to normalise: when every
    // octet is `/` or a pchar other than `%` (so no percent-encoding and no backslash), the
    // normal form and the slash view are the path itself.
    if raw.bytes().all(|b| b == b'/' || pct::is_pchar(b)) {
        if has_dot_segment(raw) {
            return Err(ScopeError::DotSegment);
        }
        return Ok(raw.to_owned());
    }
    normalize_path_escaped(raw)
}

/// Whether a `/`-separated path has a `.` or `..` segment.
fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|seg| seg == "." || seg == "..")
}

/// [`normalize_path`] for a path with percent-encodings or octets to encode.
fn normalize_path_escaped(raw: &str) -> Result<String, ScopeError> {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    // The same path with %2F and %5C read as '/', to find dot segments an upstream that
    // decodes them would see.
    let mut slash_view = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hi = bytes.get(i + 1).copied().and_then(pct::hex_val);
            let lo = bytes.get(i + 2).copied().and_then(pct::hex_val);
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err(ScopeError::BadPercentEncoding);
            };
            let decoded = hi << 4 | lo;
            if pct::is_unreserved(decoded) {
                // RFC 3986 §6.2.2.2: "percent-encoded octets that correspond to
                // unreserved characters ... should be decoded".
                out.push(char::from(decoded));
                slash_view.push(char::from(decoded));
            } else {
                pct::push_pct(&mut out, decoded);
                slash_view.push(if decoded == b'/' || decoded == b'\\' {
                    '/'
                } else {
                    '%'
                });
            }
            i += 3;
            continue;
        }
        if b == b'\\' {
            return Err(ScopeError::Backslash);
        }
        if b == b'/' || pct::is_pchar(b) {
            out.push(char::from(b));
        } else {
            pct::push_pct(&mut out, b);
        }
        slash_view.push(char::from(b));
        i += 1;
    }
    // RFC 3986 §5.2.4 would resolve "." and ".." segments; a gateway and an upstream may
    // resolve them differently, so a path with any is refused rather than resolved.
    if has_dot_segment(&slash_view) {
        return Err(ScopeError::DotSegment);
    }
    Ok(out)
}

impl Scope {
    /// A scope for `host_or_authority` (`app.example`, `app.example:8443`,
    /// `[::1]:8080`) under `path_prefix` (empty means `/`; a missing leading `/` is
    /// added; a trailing `/` is dropped, so `/api/` and `/api` are the same scope).
    /// The scope is `https`.
    pub fn new(host_or_authority: &str, path_prefix: &str) -> Result<Self, ScopeError> {
        let (host, port) = parse_authority(host_or_authority)?;
        Ok(Self {
            scheme: "https".to_owned(),
            host,
            port,
            path_prefix: normalize_prefix(path_prefix)?,
        })
    }

    /// A scope for an origin. An origin on its scheme's default port routes on host
    /// alone (`port: None`); any other port must match exactly.
    pub fn from_origin(origin: &SerializedOrigin, path_prefix: &str) -> Result<Self, ScopeError> {
        // A wildcard origin (`*.parent`, validated when it was parsed) is a wildcard scope.
        let host = if origin.is_wildcard() {
            origin.host().to_owned()
        } else {
            parse_authority(origin.host())?.0
        };
        Ok(Self {
            scheme: origin.scheme().to_owned(),
            host,
            port: (!origin.has_default_port()).then_some(origin.port()),
            path_prefix: normalize_prefix(path_prefix)?,
        })
    }

    /// A wildcard scope: every host that is one DNS label followed by `.parent`
    /// (`parent_or_authority` is `example.com` or `example.com:8443`; not an IP literal).
    /// Its [`Scope::host`] is `*.parent`; its scheme is `https` (wildcards come from
    /// certificate names and `https://*.parent` grants).
    pub fn wildcard(parent_or_authority: &str, path_prefix: &str) -> Result<Self, ScopeError> {
        let (parent, port) = parse_authority(parent_or_authority)?;
        if parent.starts_with('[') || parent.parse::<std::net::Ipv4Addr>().is_ok() {
            return Err(ScopeError::BadHost(format!("*.{parent}")));
        }
        Ok(Self {
            scheme: "https".to_string(),
            host: format!("*.{parent}"),
            port,
            path_prefix: normalize_prefix(path_prefix)?,
        })
    }

    /// The lowercase scheme of the origin (`https` for [`Scope::new`]).
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// The lowercase host (IPv6 in brackets), or `*.parent` for a wildcard scope.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Whether the host is a wildcard (`*.parent`).
    pub fn is_wildcard(&self) -> bool {
        self.host.starts_with("*.")
    }

    /// The port, or `None` for the default port (see the module documentation).
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// The normalised path prefix; always starts with `/`.
    pub fn path_prefix(&self) -> &str {
        &self.path_prefix
    }

    /// Whether a request may be routed to this scope.
    pub fn matches(&self, target: &RequestTarget) -> bool {
        self.rank(target).is_some()
    }

    /// How well this scope fits `target`, or `None` if it does not match at all.
    pub fn rank(&self, target: &RequestTarget) -> Option<Specificity> {
        let scheme_exact = match (target.arrival.secure, is_secure(&self.scheme)) {
            // Never hand TLS traffic to an origin that registered a cleartext origin.
            (true, false) => return None,
            (false, true) if !target.arrival.https_fallback => return None,
            (secure, scope_secure) => secure == scope_secure,
        };
        let host_matches = match self.host.strip_prefix("*.") {
            Some(parent) => one_label_under(&target.host, parent),
            None => self.host.eq_ignore_ascii_case(&target.host),
        };
        if !host_matches {
            return None;
        }
        let port_ok = match (self.port, target.port) {
            // An unknown request port never matches a port-specific scope.
            (Some(port), requested) => requested == Some(port),
            (None, None) => true,
            (None, Some(p)) => {
                Some(p) == origin::default_port(&self.scheme)
                    || Some(p) == origin::default_port(target.scheme())
                    || Some(p) == target.arrival.listener_port
            }
        };
        if !port_ok || !path_has_prefix(&target.path, &self.path_prefix) {
            return None;
        }
        Some(Specificity {
            scheme_exact,
            ..self.specificity()
        })
    }

    /// How specific this scope is, for longest-prefix preference (for a request of its
    /// own scheme).
    pub fn specificity(&self) -> Specificity {
        Specificity {
            exact_host: !self.is_wildcard(),
            scheme_exact: true,
            path_len: if self.path_prefix == "/" {
                0
            } else {
                self.path_prefix.len()
            },
            port_specific: self.port.is_some(),
        }
    }
}

fn is_secure(scheme: &str) -> bool {
    matches!(scheme, "https" | "wss")
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.host)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        f.write_str(&self.path_prefix)
    }
}

/// Whether `host` is one non-empty DNS label followed by `.parent` (ASCII
/// case-insensitive). An IP literal is never under a wildcard.
fn one_label_under(host: &str, parent: &str) -> bool {
    let Some((label, rest)) = host.split_once('.') else {
        return false;
    };
    !label.is_empty()
        && label != "*"
        && !host.starts_with('[')
        && rest.eq_ignore_ascii_case(parent)
        && host.parse::<std::net::Ipv4Addr>().is_err()
}

fn normalize_prefix(prefix: &str) -> Result<String, ScopeError> {
    if prefix.contains(['?', '#']) {
        return Err(ScopeError::BadPath(prefix.to_owned()));
    }
    let with_slash = if prefix.starts_with('/') {
        prefix.to_owned()
    } else {
        format!("/{prefix}")
    };
    let mut normalized = normalize_path(&with_slash)?;
    while normalized.len() > 1 && normalized.ends_with('/') {
        normalized.pop();
    }
    Ok(normalized)
}

/// Prefix match on a segment boundary: `/api` matches `/api`, `/api/`, `/api/x`, never
/// `/apix`; `/` matches everything.
fn path_has_prefix(path: &str, prefix: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

impl RequestTarget {
    /// Extracts host, port and path from a request head.
    ///
    /// The authority comes from the URI when it has one (absolute form, and HTTP/2 and
    /// HTTP/3 `:authority`), else from `Host`. The port is explicit, else the URI
    /// scheme's default, else unknown (see [`RequestTarget::with_default_port`]).
    pub fn from_parts(parts: &http::request::Parts) -> Result<Self, ScopeError> {
        Self::from_head(parts)
    }

    /// Like [`RequestTarget::from_parts`], for any request head.
    pub fn from_head(request: &impl RequestHead) -> Result<Self, ScopeError> {
        from_uri_and_headers(request.uri(), request.headers())
    }

    /// Fills in the port when the request did not say (an origin-form HTTP/1.1 request:
    /// the listener knows whether it is TLS).
    pub fn with_default_port(mut self, port: u16) -> Self {
        self.port.get_or_insert(port);
        self
    }

    /// Records how the request reached the gateway (scheme and listener port for routing).
    pub fn arrived(mut self, arrival: Arrival) -> Self {
        self.arrival = arrival;
        self
    }

    /// How the request reached the gateway.
    pub fn arrival(&self) -> Arrival {
        self.arrival
    }

    /// `https` or `http`, as the request reached the gateway.
    pub fn scheme(&self) -> &'static str {
        if self.arrival.secure {
            "https"
        } else {
            "http"
        }
    }

    /// The lowercase host (IPv6 in brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port, if known.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// `host[:port]`, with the port when known (explicit or defaulted from the scheme).
    pub fn authority(&self) -> String {
        match self.port {
            Some(port) => format!("{}:{port}", self.host),
            None => self.host.clone(),
        }
    }

    /// The normalised path, without the query.
    pub fn path(&self) -> &str {
        &self.path
    }
}

fn from_uri_and_headers(uri: &Uri, headers: &HeaderMap) -> Result<RequestTarget, ScopeError> {
    let scheme_default = uri.scheme_str().and_then(origin::default_port);
    let mut host_lines = headers.get_all(header::HOST).iter();
    let host_field = host_lines.next();
    if host_lines.next().is_some() {
        // RFC 9112 §3.2: "A server MUST respond with a 400 (Bad Request) status code to
        // any HTTP/1.1 request message that ... contains more than one Host header field
        // line".
        return Err(ScopeError::MultipleHost);
    }
    let from_host = match host_field {
        Some(v) => {
            let text = v.to_str().map_err(|_| {
                ScopeError::BadHost(String::from_utf8_lossy(v.as_bytes()).into_owned())
            })?;
            Some((text, parse_authority(text)?))
        }
        None => None,
    };
    let from_uri = match uri.authority() {
        Some(a) => Some((a.as_str(), parse_authority(a.as_str())?)),
        None => None,
    };
    let (host, port) = match (from_uri, from_host) {
        (Some((authority, (uh, up))), Some((host_text, (hh, hp)))) => {
            // RFC 9113 §8.3.1: "A server SHOULD treat a request as malformed if it
            // contains a Host header field that identifies an entity that differs from
            // the entity in the ":authority" pseudo-header field."
            if uh != hh || up.or(scheme_default) != hp.or(scheme_default) {
                return Err(ScopeError::ConflictingHost {
                    host: host_text.to_owned(),
                    authority: authority.to_owned(),
                });
            }
            (uh, up)
        }
        (Some((_, hp)), None) | (None, Some((_, hp))) => hp,
        (None, None) => return Err(ScopeError::MissingHost),
    };
    let raw_path = uri.path();
    let path = if raw_path.is_empty() {
        "/".to_owned()
    } else if raw_path.starts_with('/') {
        normalize_path(raw_path)?
    } else {
        return Err(ScopeError::BadPath(raw_path.to_owned()));
    };
    Ok(RequestTarget {
        host,
        port: port.or(scheme_default),
        path,
        arrival: Arrival::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn target(uri: &str, host: Option<&str>) -> Result<RequestTarget, ScopeError> {
        let mut b = http::Request::builder().uri(uri);
        if let Some(h) = host {
            b = b.header("host", h);
        }
        let (parts, ()) = b.body(()).unwrap().into_parts();
        RequestTarget::from_parts(&parts)
    }

    fn t(uri: &str) -> RequestTarget {
        target(uri, None).unwrap()
    }

    #[test]
    fn scope_construction() {
        let s = Scope::new("App.Example.", "api/").unwrap();
        assert_eq!(
            (s.host(), s.port(), s.path_prefix()),
            ("app.example", None, "/api")
        );
        let s = Scope::new("app.example:8443", "").unwrap();
        assert_eq!((s.port(), s.path_prefix()), (Some(8443), "/"));
        let s = Scope::new("[::1]:8080", "/").unwrap();
        assert_eq!((s.host(), s.port()), ("[::1]", Some(8080)));
        assert_eq!(
            Scope::new("a.example", "/%7Eu/%2f").unwrap().path_prefix(),
            "/~u/%2F"
        );
        assert!(matches!(
            Scope::new("a b", "/"),
            Err(ScopeError::BadHost(_))
        ));
        assert!(matches!(
            Scope::new("a.example:x", "/"),
            Err(ScopeError::BadPort(_))
        ));
        assert!(matches!(Scope::new("", "/"), Err(ScopeError::BadHost(_))));
        assert_eq!(
            Scope::new("a.example", "/a/../b"),
            Err(ScopeError::DotSegment)
        );
        assert!(matches!(
            Scope::new("a.example", "/a?b"),
            Err(ScopeError::BadPath(_))
        ));
    }

    #[test]
    fn from_origin_routing_model() {
        let o: SerializedOrigin = "https://App.example".parse().unwrap();
        assert_eq!(Scope::from_origin(&o, "/").unwrap().port(), None);
        let o: SerializedOrigin = "https://app.example:8443".parse().unwrap();
        let s = Scope::from_origin(&o, "/").unwrap();
        assert_eq!((s.host(), s.port()), ("app.example", Some(8443)));
        assert!(s.matches(&t("https://app.example:8443/x")));
        assert!(!s.matches(&t("https://app.example/x")));
        assert!(!s.matches(&target("/x", Some("app.example")).unwrap()));
        assert!(s.matches(&target("/x", Some("app.example:8443")).unwrap()));
    }

    #[test]
    fn request_target_sources() {
        let r = t("https://A.Example/p?q=1");
        assert_eq!(
            (r.host(), r.port(), r.path()),
            ("a.example", Some(443), "/p")
        );
        let r = target("/p", Some("a.example")).unwrap();
        assert_eq!(r.port(), None);
        assert_eq!(r.clone().with_default_port(80).port(), Some(80));
        assert_eq!(
            target("/p", Some("a.example:81"))
                .unwrap()
                .with_default_port(80)
                .port(),
            Some(81)
        );
        assert_eq!(t("http://[::1]:8080/").host(), "[::1]");
        // Same entity, explicit default port in one place only.
        assert!(target("https://a.example/", Some("a.example:443")).is_ok());
        assert!(target("https://a.example/", Some("A.EXAMPLE")).is_ok());
        assert!(matches!(
            target("https://a.example/", Some("b.example")),
            Err(ScopeError::ConflictingHost { .. })
        ));
        assert!(matches!(
            target("https://a.example/", Some("a.example:8443")),
            Err(ScopeError::ConflictingHost { .. })
        ));
        assert_eq!(target("/p", None), Err(ScopeError::MissingHost));
        assert!(matches!(
            target("/p", Some("a b")),
            Err(ScopeError::BadHost(_))
        ));
        assert!(matches!(
            target("/p", Some("u@a.example")),
            Err(ScopeError::BadHost(_))
        ));
        let (mut parts, ()) = http::Request::new(()).into_parts();
        parts.uri = "/".parse().unwrap();
        parts.headers.append("host", "a.example".parse().unwrap());
        parts.headers.append("host", "b.example".parse().unwrap());
        assert_eq!(
            RequestTarget::from_parts(&parts),
            Err(ScopeError::MultipleHost)
        );
        assert!(matches!(
            target("*", Some("a.example")),
            Err(ScopeError::BadPath(_))
        ));
    }

    #[test]
    fn path_matching() {
        let s = Scope::new("a.example", "/api").unwrap();
        for ok in [
            "/api",
            "/api/",
            "/api/x",
            "/api?q",
            "/%61pi/x",
            "/api//x",
            "/api/x%2Fy",
        ] {
            assert!(s.matches(&t(&format!("https://a.example{ok}"))), "{ok}");
        }
        for no in ["/apix", "/ap", "/", "/API", "/api%2Fx", "/x/api"] {
            assert!(!s.matches(&t(&format!("https://a.example{no}"))), "{no}");
        }
        for bad in [
            "/api/../admin",
            "/api/./x",
            "/api/%2e%2E/admin",
            "/api/.%2e/admin",
            "/api/x%2F..%2Fadmin",
            "/api/x%5C..%5Cadmin",
            "/..",
            "/api/%zz",
        ] {
            assert!(
                target(&format!("https://a.example{bad}"), None).is_err(),
                "{bad}"
            );
        }
        let root = Scope::new("a.example", "/").unwrap();
        assert!(root.matches(&t("https://a.example/anything/at/all")));
        assert!(!root.matches(&t("https://b.example/")));
        // Dots inside segments are fine.
        assert!(root.matches(&t("https://a.example/.well-known/x/a..b/...")));
    }

    #[test]
    fn specificity_prefers_longer_prefix_then_port() {
        let a = Scope::new("a.example", "/").unwrap();
        let b = Scope::new("a.example:443", "/").unwrap();
        let c = Scope::new("a.example", "/api").unwrap();
        let d = Scope::new("a.example", "/api/v2").unwrap();
        assert!(a.specificity() < b.specificity());
        assert!(b.specificity() < c.specificity());
        assert!(c.specificity() < d.specificity());
    }

    #[test]
    fn a_wildcard_scope_matches_exactly_one_more_label() {
        let s = Scope::wildcard("Example.COM", "/").unwrap();
        assert_eq!(s.host(), "*.example.com");
        assert!(s.is_wildcard());
        assert_eq!(s.to_string(), "https://*.example.com/");
        assert!(s.matches(&t("https://a.example.com/x")));
        assert!(s.matches(&t("https://A.Example.Com/")));
        assert!(!s.matches(&t("https://example.com/")));
        assert!(!s.matches(&t("https://a.b.example.com/")));
        assert!(!s.matches(&t("https://aexample.com/")));
        assert!(!s.matches(&t("https://a.example.com.evil/")));
        let ported = Scope::wildcard("example.com:8443", "/api").unwrap();
        assert!(ported.matches(&t("https://a.example.com:8443/api/x")));
        assert!(!ported.matches(&t("https://a.example.com/api/x")));
        assert!(!ported.matches(&t("https://a.example.com:8443/")));
        for bad in ["127.0.0.1", "[::1]", "a b", ""] {
            assert!(Scope::wildcard(bad, "/").is_err(), "{bad}");
        }
        // Hosts from `new` are never wildcards, and `*` is not a host.
        assert!(Scope::new("*.example.com", "/").is_err());
        assert!(!Scope::new("a.example.com", "/").unwrap().is_wildcard());
        // A wildcard origin claimed by an origin is the same wildcard scope.
        let claimed: SerializedOrigin = "https://*.Example.COM".parse().unwrap();
        assert_eq!(Scope::from_origin(&claimed, "/").unwrap(), s);
        let claimed: SerializedOrigin = "https://*.example.com:8443".parse().unwrap();
        assert_eq!(Scope::from_origin(&claimed, "/api").unwrap(), ported);
    }

    #[test]
    fn an_exact_host_outranks_a_wildcard_whatever_the_paths() {
        let exact_root = Scope::new("a.example.com", "/").unwrap();
        let wild_deep = Scope::wildcard("example.com:443", "/very/long/prefix").unwrap();
        assert!(exact_root.specificity() > wild_deep.specificity());
        let wild_root = Scope::wildcard("example.com", "/").unwrap();
        assert!(wild_root.specificity() < wild_deep.specificity());
    }

    fn arrived(uri: &str, host: Option<&str>, secure: bool, fallback: bool) -> RequestTarget {
        target(uri, host).unwrap().arrived(Arrival {
            secure,
            listener_port: Some(8080),
            https_fallback: fallback,
        })
    }

    #[test]
    fn scheme_is_part_of_the_match() {
        let http: SerializedOrigin = "http://app.example".parse().unwrap();
        let https: SerializedOrigin = "https://app.example".parse().unwrap();
        let http = Scope::from_origin(&http, "/").unwrap();
        let https = Scope::from_origin(&https, "/").unwrap();
        assert_eq!(http.to_string(), "http://app.example/");
        // TLS traffic never reaches an http:// scope.
        let tls = arrived("/x", Some("app.example"), true, true);
        assert_eq!(tls.scheme(), "https");
        assert!(!http.matches(&tls));
        assert!(https.matches(&tls));
        // Cleartext: http:// scopes, and https:// only as a ranked-lower fallback.
        let clear = arrived("/x", Some("app.example"), false, true);
        assert_eq!(clear.scheme(), "http");
        assert!(http.matches(&clear) && https.matches(&clear));
        assert!(http.rank(&clear) > https.rank(&clear));
        let longer = Scope::from_origin(&"https://app.example".parse().unwrap(), "/x").unwrap();
        assert!(http.rank(&clear) > longer.rank(&clear));
        let strict = arrived("/x", Some("app.example"), false, false);
        assert!(http.matches(&strict));
        assert!(!https.matches(&strict));
        // A target nobody described counts as https.
        assert!(!http.matches(&t("http://app.example/")));
    }

    #[test]
    fn port_rules() {
        let https: SerializedOrigin = "https://app.example".parse().unwrap();
        let default = Scope::from_origin(&https, "/").unwrap();
        let on_8443: SerializedOrigin = "https://app.example:8443".parse().unwrap();
        let on_8443 = Scope::from_origin(&on_8443, "/").unwrap();
        // Default port: no port, the scheme's default, the listener's port (8080 here).
        for host in ["app.example", "app.example:443", "app.example:8080"] {
            assert!(
                default.matches(&arrived("/", Some(host), true, false)),
                "{host}"
            );
        }
        // Cleartext request for an https scope: port 80 is the request's default.
        assert!(default.matches(&arrived("/", Some("app.example:80"), false, true)));
        for host in ["app.example:8443", "app.example:9999", "app.example:80"] {
            assert!(
                !default.matches(&arrived("/", Some(host), true, false)),
                "{host}"
            );
        }
        // An explicit port matches only itself, even on the listener it names.
        assert!(on_8443.matches(&arrived("/", Some("app.example:8443"), true, false)));
        for host in ["app.example", "app.example:443", "app.example:8080"] {
            assert!(
                !on_8443.matches(&arrived("/", Some(host), true, false)),
                "{host}"
            );
        }
    }

    proptest! {
        #[test]
        fn host_case_invariant(host in "[a-z][a-z0-9-]{0,10}(\\.[a-z]{1,5}){1,3}", flips in proptest::collection::vec(any::<bool>(), 30), path in "(/[a-z0-9]{1,4}){0,3}") {
            let upper: String = host.chars().zip(flips.iter().cycle()).map(|(c, &f)| if f { c.to_ascii_uppercase() } else { c }).collect();
            let scope = Scope::new(&upper, "/").unwrap();
            let uri = format!("https://{host}{path}");
            prop_assert!(scope.matches(&t(&uri)));
            let scope = Scope::new(&host, "/").unwrap();
            let uri = format!("https://{upper}{path}");
            prop_assert!(scope.matches(&t(&uri)));
        }

        #[test]
        fn no_match_on_longer_segment(suffix in "[a-z]+", rest in "(/[a-z]{0,3}){0,2}") {
            let scope = Scope::new("a.example", "/api").unwrap();
            let uri = format!("https://a.example/api{suffix}{rest}");
            prop_assert!(!scope.matches(&t(&uri)));
        }

        /// The shortcut for paths with nothing to escape gives what the general
        /// normalisation gives, refusals included.
        #[test]
        fn the_plain_path_shortcut_agrees_with_the_general_normalisation(
            path in "(/(\\.{1,2}|[a-zA-Z0-9._~!$&'()*+,;=:@%\\\\-]{0,4})){1,6}",
        ) {
            prop_assert_eq!(normalize_path(&path), normalize_path_escaped(&path));
        }

        #[test]
        fn normalize_never_panics(path in "[ -~]{0,30}") {
            let _ = normalize_path(&path);
            let _ = Scope::new("a.example", &path);
        }
    }
}
