//! RFC 6454 ASCII serialized origins (`https://app.example.net`, `http://[::1]:8080`).

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An RFC 6454 tuple origin: scheme, host and port, always with a known port.
///
/// Parsing normalises: scheme and host are lowercased, IPv6 literals are written in their
/// canonical compressed form inside brackets, and a missing port becomes the scheme's
/// default. [`Display`](fmt::Display) writes the RFC 6454 §6.2 ASCII serialization,
/// which omits the default port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SerializedOrigin {
    scheme: String,
    host: String,
    port: u16,
}

/// Why a serialized origin was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OriginError {
    /// The opaque origin `null`, which PTTH forbids.
    #[error("the opaque origin \"null\" cannot be registered")]
    Null,
    /// No `scheme://` prefix.
    #[error("missing or invalid scheme")]
    BadScheme,
    /// Userinfo (`user@`) is not part of an origin.
    #[error("an origin has no userinfo")]
    Userinfo,
    /// A path, query or fragment follows the authority.
    #[error("an origin has no path, query or fragment")]
    HasPath,
    /// The host is empty or has characters outside a DNS name / IP literal.
    #[error("invalid host {0:?}")]
    BadHost(String),
    /// The port is not a number in 1..=65535.
    #[error("invalid port {0:?}")]
    BadPort(String),
    /// No port was given and the scheme has no default port.
    #[error("scheme {0:?} has no default port; give one explicitly")]
    NoDefaultPort(String),
}

/// The default port of a scheme, for schemes that have one (RFC 9110 §4.2, RFC 6455 §3).
pub fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

impl SerializedOrigin {
    /// Builds an origin from parts, normalising and validating them like [`FromStr`].
    pub fn new(scheme: &str, host: &str, port: Option<u16>) -> Result<Self, OriginError> {
        let scheme = parse_scheme(scheme)?;
        let host = match host.strip_prefix("*.") {
            Some(parent) => wildcard_host(host, parent)?,
            None => parse_host(host)?,
        };
        let port = match port {
            Some(0) => return Err(OriginError::BadPort("0".to_owned())),
            Some(p) => p,
            None => {
                default_port(&scheme).ok_or_else(|| OriginError::NoDefaultPort(scheme.clone()))?
            }
        };
        Ok(Self { scheme, host, port })
    }

    /// The lowercase scheme.
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// The lowercase host; IPv6 literals include their brackets; `*.parent` for a wildcard.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Whether the host is a wildcard `*.parent`: an origin claiming every host one DNS
    /// label under `parent`, as a certificate's wildcard name does (draft-bt §3 allows
    /// wildcard ORIGIN entries "so that wildcard certificates can be used"). Not an RFC 6454
    /// origin: it names a set of them, and only claims and grants use it.
    pub fn is_wildcard(&self) -> bool {
        self.host.starts_with("*.")
    }

    /// The port, explicit or defaulted from the scheme.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the port is the scheme's default (and so omitted when serialized).
    pub fn has_default_port(&self) -> bool {
        default_port(&self.scheme) == Some(self.port)
    }
}

impl fmt::Display for SerializedOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // RFC 6454 §6.2: scheme, "://", host, and ":" port only "if the port part of the
        // origin triple is different from the default port for the protocol".
        write!(f, "{}://{}", self.scheme, self.host)?;
        if !self.has_default_port() {
            write!(f, ":{}", self.port)?;
        }
        Ok(())
    }
}

impl FromStr for SerializedOrigin {
    type Err = OriginError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // draft-kazuho-ptth-ptth-01 §3: the value is a list of serialized origins, and
        // "null" is forbidden.
        if s.eq_ignore_ascii_case("null") {
            return Err(OriginError::Null);
        }
        let (scheme, rest) = s.split_once("://").ok_or(OriginError::BadScheme)?;
        if rest.contains(['/', '?', '#']) {
            return Err(OriginError::HasPath);
        }
        if rest.contains('@') {
            return Err(OriginError::Userinfo);
        }
        let (host, port) = split_host_port(rest)?;
        let port = match port {
            None => None,
            Some(p) => Some(parse_port(p)?),
        };
        Self::new(scheme, host, port)
    }
}

fn parse_scheme(scheme: &str) -> Result<String, OriginError> {
    // RFC 3986 §3.1: `scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )`.
    let mut bytes = scheme.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphabetic());
    if !first_ok || !bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.')) {
        return Err(OriginError::BadScheme);
    }
    Ok(scheme.to_ascii_lowercase())
}

/// Splits `host[:port]`, where host may be a bracketed IPv6 literal. The port text is
/// returned unparsed (`Some("")` for a trailing colon).
pub(crate) fn split_host_port(authority: &str) -> Result<(&str, Option<&str>), OriginError> {
    if authority.starts_with('[') {
        let end = authority
            .find(']')
            .ok_or_else(|| OriginError::BadHost(authority.to_owned()))?;
        let (host, rest) = authority.split_at(end + 1);
        match rest.strip_prefix(':') {
            Some(port) => Ok((host, Some(port))),
            None if rest.is_empty() => Ok((host, None)),
            None => Err(OriginError::BadHost(authority.to_owned())),
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) => Ok((host, Some(port))),
            None => Ok((authority, None)),
        }
    }
}

pub(crate) fn parse_port(text: &str) -> Result<u16, OriginError> {
    // RFC 3986 §3.2.3 allows `*DIGIT`; we require 1..=5 digits and a non-zero value.
    if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(OriginError::BadPort(text.to_owned()));
    }
    match text.parse::<u16>() {
        Ok(0) | Err(_) => Err(OriginError::BadPort(text.to_owned())),
        Ok(p) => Ok(p),
    }
}

/// A wildcard host `*.parent` (`text`): the parent must be a DNS name, not an address, and
/// the `*` a whole left-most label (RFC 6125 §6.4.3).
fn wildcard_host(text: &str, parent: &str) -> Result<String, OriginError> {
    let bad = || OriginError::BadHost(text.to_owned());
    let parent = parse_host(parent).map_err(|_| bad())?;
    let parent = parent.strip_suffix('.').unwrap_or(&parent);
    let address = parent.starts_with('[') || parent.parse::<Ipv4Addr>().is_ok();
    if address || parent.is_empty() {
        return Err(bad());
    }
    Ok(format!("*.{parent}"))
}

/// Validates and normalises a host: a bracketed IPv6 literal, an IPv4 address, or a DNS
/// name made of letters, digits, `-`, `_` and `.`.
pub(crate) fn parse_host(host: &str) -> Result<String, OriginError> {
    let bad = || OriginError::BadHost(host.to_owned());
    if let Some(inner) = host.strip_prefix('[') {
        let inner = inner.strip_suffix(']').ok_or_else(bad)?;
        // Zone identifiers (RFC 6874) have no meaning across hosts; std rejects them.
        let addr: Ipv6Addr = inner.parse().map_err(|_| bad())?;
        return Ok(format!("[{addr}]"));
    }
    if host.is_empty() || host.len() > 254 {
        return Err(bad());
    }
    let valid_chars = host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !valid_chars || host.starts_with('.') || host.contains("..") {
        return Err(bad());
    }
    // A name made only of digits and dots must be a valid dotted-quad IPv4 address, so
    // that `1.2.3` or `999.1.1.1` cannot pose as an address.
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let addr: Ipv4Addr = host.trim_end_matches('.').parse().map_err(|_| bad())?;
        return Ok(addr.to_string());
    }
    Ok(host.to_ascii_lowercase())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    fn o(s: &str) -> SerializedOrigin {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_serializes() {
        let a = o("https://backend.example.com");
        assert_eq!(
            (a.scheme(), a.host(), a.port()),
            ("https", "backend.example.com", 443)
        );
        assert_eq!(a.to_string(), "https://backend.example.com");
        let b = o("https://api.example.com:8443");
        assert_eq!(b.port(), 8443);
        assert_eq!(b.to_string(), "https://api.example.com:8443");
        assert_eq!(
            o("HTTPS://App.Example.NET:443").to_string(),
            "https://app.example.net"
        );
        assert_eq!(o("http://x.example:80").to_string(), "http://x.example");
        assert_eq!(
            o("http://x.example:443").to_string(),
            "http://x.example:443"
        );
        assert_eq!(o("http://[::1]:8080").to_string(), "http://[::1]:8080");
        assert_eq!(
            o("https://[2001:DB8:0:0::1]").to_string(),
            "https://[2001:db8::1]"
        );
        assert_eq!(o("http://127.0.0.1:3000").host(), "127.0.0.1");
        assert_eq!(o("foo://x.example:9").to_string(), "foo://x.example:9");
    }

    #[test]
    fn wildcard_origins_name_a_dns_parent() {
        let w = o("https://*.Apps.Example.:8443");
        assert!(w.is_wildcard());
        assert_eq!(w.host(), "*.apps.example");
        assert_eq!(w.to_string(), "https://*.apps.example:8443");
        assert_eq!(o(&w.to_string()), w);
        assert!(!o("https://apps.example").is_wildcard());
        for bad in [
            "https://*",
            "https://*.",
            "https://*.*.example",
            "https://a.*.example",
            "https://*a.example",
            "https://*.1.2.3.4",
            "https://*.[::1]",
            "https://*..example",
        ] {
            assert!(
                bad.parse::<SerializedOrigin>().is_err(),
                "{bad} was accepted"
            );
        }
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!("null".parse::<SerializedOrigin>(), Err(OriginError::Null));
        assert_eq!("NULL".parse::<SerializedOrigin>(), Err(OriginError::Null));
        type Check = fn(&OriginError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("https://u@x.example", |e| *e == OriginError::Userinfo),
            ("https://x.example/", |e| *e == OriginError::HasPath),
            ("https://x.example/p", |e| *e == OriginError::HasPath),
            ("https://x.example?q", |e| *e == OriginError::HasPath),
            ("https://x.example#f", |e| *e == OriginError::HasPath),
            ("x.example", |e| *e == OriginError::BadScheme),
            ("1http://x.example", |e| *e == OriginError::BadScheme),
            ("://x.example", |e| *e == OriginError::BadScheme),
            ("https://", |e| matches!(e, OriginError::BadHost(_))),
            ("https://x.example:", |e| {
                matches!(e, OriginError::BadPort(_))
            }),
            ("https://x.example:0", |e| {
                matches!(e, OriginError::BadPort(_))
            }),
            ("https://x.example:65536", |e| {
                matches!(e, OriginError::BadPort(_))
            }),
            ("https://x.example:+1", |e| {
                matches!(e, OriginError::BadPort(_))
            }),
            ("https://x.example:1:2", |e| {
                matches!(e, OriginError::BadPort(_))
            }),
            ("https://x%41.example", |e| {
                matches!(e, OriginError::BadHost(_))
            }),
            ("https://x..example", |e| {
                matches!(e, OriginError::BadHost(_))
            }),
            ("https://[::1", |e| matches!(e, OriginError::BadHost(_))),
            ("https://[::1]x", |e| matches!(e, OriginError::BadHost(_))),
            ("https://[fe80::1%25eth0]", |e| {
                matches!(e, OriginError::BadHost(_))
            }),
            ("https://::1", |e| matches!(e, OriginError::BadPort(_))),
            ("https://999.1.1.1", |e| {
                matches!(e, OriginError::BadHost(_))
            }),
            ("foo://x.example", |e| {
                matches!(e, OriginError::NoDefaultPort(_))
            }),
        ];
        for (input, check) in cases {
            let err = input.parse::<SerializedOrigin>().unwrap_err();
            assert!(check(&err), "{input}: {err:?}");
        }
    }

    pub(crate) fn arb_origin() -> impl Strategy<Value = SerializedOrigin> {
        let scheme = prop_oneof![Just("http"), Just("https"), Just("wss"), Just("git+ssh")];
        let host = prop_oneof![
            "[a-zA-Z0-9]([a-zA-Z0-9_-]{0,10}[a-zA-Z0-9])?(\\.[a-zA-Z][a-zA-Z0-9-]{0,8}){0,3}",
            any::<[u8; 4]>().prop_map(|b| Ipv4Addr::from(b).to_string()),
            any::<[u16; 8]>().prop_map(|s| format!("[{}]", Ipv6Addr::from(s))),
        ];
        (scheme, host, proptest::option::of(1u16..)).prop_filter_map("valid", |(s, h, p)| {
            let p = if s == "git+ssh" {
                Some(p.unwrap_or(22))
            } else {
                p
            };
            SerializedOrigin::new(s, &h, p).ok()
        })
    }

    proptest! {
        #[test]
        fn display_from_str_round_trip(origin in arb_origin()) {
            let text = origin.to_string();
            prop_assert_eq!(text.parse::<SerializedOrigin>().unwrap(), origin);
        }

        #[test]
        fn parse_never_panics(s in ".{0,40}") {
            let _ = s.parse::<SerializedOrigin>();
        }
    }
}
