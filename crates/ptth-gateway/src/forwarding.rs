//! Forwarding fields the application can trust: `X-Forwarded-For`, `-Proto`, `-Host`,
//! `X-Real-IP` and RFC 7239 `Forwarded`, set from what the gateway saw, and the trusted
//! proxies (CIDRs) whose values it keeps and appends to instead.
//!
//! A public client can write any of these fields. Applications (Rails, Django, Express,
//! Spring) read them as the client's address and scheme, so a value the client wrote must
//! never reach them as if the gateway had set it. The rule:
//!
//! - from a peer outside the trusted list (the default: the list is empty), every field named
//!   in [`FORWARDING_FIELDS`] is removed, then `X-Forwarded-For` (the peer address),
//!   `X-Forwarded-Proto` (`http` or `https` as the request arrived), `X-Forwarded-Host` (the
//!   authority the client asked for), `X-Real-IP` (the peer address) and one `Forwarded`
//!   element are set;
//! - from a trusted peer (a load balancer in front of the gateway), its `X-Forwarded-For`
//!   and `Forwarded` are kept with the gateway's hop appended, and its `X-Forwarded-Proto`,
//!   `-Host`, `-Port` and `X-Real-IP` are kept when present (set when absent; the port never is);
//! - in both cases, when the client `X-Real-IP` names is the peer itself, [`PTTH_CLIENT_PORT`]
//!   carries the peer's TCP or UDP port to the origin (for PROXY protocol v2 headers).
//!
//! Why a `ptth-*` field and not the port form of `Forwarded` (RFC 7239 §6,
//! `for="192.0.2.7:51234"`): every application behind ptth reads `Forwarded`, and many parse
//! its `for` as a bare address, so adding ports there would change what they all see for the
//! sake of the few routes that write PROXY headers; and behind trusted proxies the origin
//! would have to find the client's element in the chain again. The gateway removes every
//! `ptth-*` field a public client sends (`proxy::strip_ptth_fields`) before this module runs,
//! so an origin reading [`PTTH_CLIENT_PORT`] from its authenticated connection knows the
//! gateway wrote it.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Uri;
use ptth_core::RequestTarget;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// `X-Forwarded-For`: the chain of client addresses.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`: the scheme the client used.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`: the authority the client asked for.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// `X-Forwarded-Port`: never set by the gateway (the port is in `X-Forwarded-Host` when the
/// client named one), removed from untrusted peers.
pub const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
/// `X-Real-IP`: the client's address, one value.
pub const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// `ptth-client-port`: the public client's port, set only when the `X-Real-IP` the request
/// carries is the peer the gateway saw (not a client a trusted proxy named, whose port the
/// gateway does not know). Only the gateway writes it: public values are removed with every
/// other `ptth-*` field, and the origin removes it before the upstream sees the request.
pub const PTTH_CLIENT_PORT: HeaderName = HeaderName::from_static("ptth-client-port");

/// Every field an untrusted peer's value of is removed.
pub const FORWARDING_FIELDS: [HeaderName; 6] = [
    X_FORWARDED_FOR,
    X_FORWARDED_PROTO,
    X_FORWARDED_HOST,
    X_FORWARDED_PORT,
    X_REAL_IP,
    header::FORWARDED,
];

/// An IP network: an address and a prefix length, IPv4 or IPv6.
///
/// Parsed from `ADDR/LEN` or a bare `ADDR` (one host). The address must be the network's
/// first (no host bits set: `10.0.0.1/8` is refused rather than silently widened or
/// narrowed). An IPv4-mapped IPv6 network (`::ffff:10.0.0.0/104`) is stored as the IPv4
/// network it maps (`10.0.0.0/8`), because peers are compared in canonical form: an IPv4
/// client reaching a dual-stack listener appears as `::ffff:a.b.c.d` and is matched as
/// `a.b.c.d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

/// Why a CIDR was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CidrError {
    /// The part before `/` is not an IPv4 or IPv6 address.
    #[error("{0:?} is not an IP address (write 10.0.0.0/8, 2001:db8::/32 or one address)")]
    BadAddress(String),
    /// The part after `/` is not a number within the address family's bits.
    #[error("{text:?}: the prefix length must be a number from 0 to {max}")]
    BadLength {
        /// The CIDR as written.
        text: String,
        /// 32 for IPv4, 128 for IPv6.
        max: u8,
    },
    /// The address has bits set beyond the prefix length.
    #[error("{text:?} has host bits set beyond the prefix; the network is {network}")]
    HostBits {
        /// The CIDR as written.
        text: String,
        /// The network it would denote with the host bits cleared.
        network: Cidr,
    },
}

impl Cidr {
    /// The network's address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length in bits.
    pub fn len(&self) -> u8 {
        self.len
    }

    /// Whether the prefix is empty (`0.0.0.0/0` or `::/0`: every address of the family).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `ip`, in canonical form (IPv4-mapped IPv6 as IPv4), is in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = mask32(self.len);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = mask128(self.len);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }

    /// The same network with the host bits cleared.
    fn network(self) -> Self {
        let addr = match self.addr {
            IpAddr::V4(a) => IpAddr::V4((u32::from(a) & mask32(self.len)).into()),
            IpAddr::V6(a) => IpAddr::V6((u128::from(a) & mask128(self.len)).into()),
        };
        Self {
            addr,
            len: self.len,
        }
    }
}

fn mask32(len: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(len.min(32)))
        .unwrap_or(0)
}

fn mask128(len: u8) -> u128 {
    u128::MAX
        .checked_shl(128 - u32::from(len.min(128)))
        .unwrap_or(0)
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Self, CidrError> {
        let (addr_text, len_text) = match text.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (text, None),
        };
        // std's parser takes exactly the textual forms (no brackets, no zone, no port).
        let addr: IpAddr = addr_text
            .parse()
            .map_err(|_| CidrError::BadAddress(text.to_owned()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len_text {
            None => max,
            Some(l) => {
                let bad = || CidrError::BadLength {
                    text: text.to_owned(),
                    max,
                };
                // Digits only: no sign, no spaces, no leading zeros that hide a typo.
                if l.is_empty() || l.len() > 3 || !l.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                if l.len() > 1 && l.starts_with('0') {
                    return Err(bad());
                }
                match l.parse::<u8>() {
                    Ok(n) if n <= max => n,
                    _ => return Err(bad()),
                }
            }
        };
        let written = Self { addr, len };
        let network = written.network();
        if network != written {
            return Err(CidrError::HostBits {
                text: text.to_owned(),
                network,
            });
        }
        // IPv4-mapped networks become the IPv4 network they map (see the type's docs).
        if let IpAddr::V6(v6) = addr {
            if let (Some(v4), true) = (v6.to_ipv4_mapped(), len >= 96) {
                return Ok(Self {
                    addr: IpAddr::V4(v4),
                    len: len - 96,
                });
            }
        }
        Ok(written)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// The proxies in front of the gateway whose forwarding fields it keeps (`--trusted-proxy`,
/// config key `trusted-proxies`). Empty by default: nobody is trusted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    /// The list `cidrs`.
    pub fn new(cidrs: Vec<Cidr>) -> Self {
        Self(cidrs)
    }

    /// Parses every CIDR; the error names the one refused.
    pub fn parse<S: AsRef<str>>(texts: &[S]) -> Result<Self, CidrError> {
        texts
            .iter()
            .map(|t| t.as_ref().parse())
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    /// Whether `ip` is in one of the trusted networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    /// The networks.
    pub fn cidrs(&self) -> &[Cidr] {
        &self.0
    }
}

/// What the gateway saw of the hop a public request came over.
#[derive(Debug, Clone, Copy)]
pub struct Hop<'a> {
    /// The peer's address (the client, or a proxy in front of the gateway).
    pub peer: IpAddr,
    /// The peer's port, sent as [`PTTH_CLIENT_PORT`] when the peer is the client.
    pub peer_port: u16,
    /// Whether the request arrived over TLS (the TLS listener, public HTTP/3).
    pub tls: bool,
    /// The authority the request named, from [`requested_authority`].
    pub authority: &'a str,
}

/// The authority the client asked for, as the gateway routed it: the host (lowercase, IPv6
/// in brackets) and the port only when the client wrote one. Read from the URI's authority
/// (absolute form, HTTP/2 and HTTP/3 `:authority`), else from `Host`, like the routing.
pub fn requested_authority(uri: &Uri, headers: &HeaderMap, target: &RequestTarget) -> String {
    let written = uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| headers.get(header::HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or_default();
    let host_port = written.rsplit('@').next().unwrap_or_default();
    let explicit_port = match host_port.strip_prefix('[') {
        Some(rest) => rest.contains("]:"),
        None => host_port.contains(':'),
    };
    match (explicit_port, target.port()) {
        (true, Some(port)) => format!("{}:{port}", target.host()),
        _ => target.host().to_owned(),
    }
}

/// Sets the forwarding fields of a public request from `hop` (see the module docs), keeping
/// and appending to the peer's own values only when the peer is in `trusted`.
pub fn set_forwarding_fields(headers: &mut HeaderMap, hop: &Hop<'_>, trusted: &TrustedProxies) {
    let peer = hop.peer.to_canonical();
    let peer_text = peer.to_string();
    let proto = if hop.tls { "https" } else { "http" };
    let element = forwarded_element(peer, &peer_text, proto, hop.authority);
    if !trusted.contains(peer) {
        // Every request passes here and most carry none of these fields: one look at the
        // names present is cheaper than six removals by name.
        if headers
            .keys()
            .any(|k| FORWARDING_FIELDS.iter().any(|f| f == k))
        {
            for name in FORWARDING_FIELDS {
                headers.remove(name);
            }
        }
        // Room for the five fields at once, so the map grows (and rehashes) once at most.
        headers.reserve(5);
        insert(headers, X_FORWARDED_FOR, &peer_text);
        insert(headers, X_FORWARDED_PROTO, proto);
        insert(headers, X_FORWARDED_HOST, hop.authority);
        insert(headers, X_REAL_IP, &peer_text);
        insert(headers, header::FORWARDED, &element);
        set_client_port(headers, hop.peer_port);
        return;
    }
    // A trusted proxy: its chain is kept and this hop appended, as one field line each (some
    // applications read only the first line of a field).
    let theirs = list_values(headers, &X_FORWARDED_FOR);
    let mut chain = theirs.clone();
    chain.push(peer_text);
    insert(headers, X_FORWARDED_FOR, &chain.join(", "));
    // Forwarded lines are kept whole: a quoted-string may hold a comma.
    let mut elements: Vec<String> = headers
        .get_all(header::FORWARDED)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    elements.push(element);
    insert(headers, header::FORWARDED, &elements.join(", "));
    if !headers.contains_key(X_FORWARDED_PROTO) {
        insert(headers, X_FORWARDED_PROTO, proto);
    }
    if !headers.contains_key(X_FORWARDED_HOST) {
        insert(headers, X_FORWARDED_HOST, hop.authority);
    }
    headers.remove(PTTH_CLIENT_PORT);
    if !headers.contains_key(X_REAL_IP) {
        let client = client_through(&theirs, peer, trusted);
        insert(headers, X_REAL_IP, &client.to_string());
        if client == peer {
            set_client_port(headers, hop.peer_port);
        }
    }
}

/// Sets [`PTTH_CLIENT_PORT`] to `port` (the port of the client named in `X-Real-IP`).
fn set_client_port(headers: &mut HeaderMap, port: u16) {
    headers.insert(PTTH_CLIENT_PORT, HeaderValue::from(port));
}

/// The client as seen through trusted proxies: walking the chain from the right (`peer`
/// last), the first address not in `trusted`. An entry that is not an address stops the
/// walk at the last address read; a chain of only trusted addresses gives its leftmost.
fn client_through(chain: &[String], peer: IpAddr, trusted: &TrustedProxies) -> IpAddr {
    let mut client = peer;
    for entry in chain.iter().rev() {
        if !trusted.contains(client) {
            break;
        }
        match entry.trim().parse::<IpAddr>() {
            Ok(ip) => client = ip.to_canonical(),
            Err(_) => break,
        }
    }
    client
}

/// The comma-separated members of every line of the list field `name` that is visible
/// ASCII, in order; lines that are not are dropped.
fn list_values(headers: &HeaderMap, name: &HeaderName) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(str::to_owned)
        .collect()
}

fn insert(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    } else {
        headers.remove(name);
    }
}

/// One RFC 7239 `Forwarded` element for this hop.
fn forwarded_element(peer: IpAddr, peer_text: &str, proto: &str, authority: &str) -> String {
    let mut element = String::with_capacity(peer_text.len() + authority.len() + 32);
    element.push_str("for=");
    // RFC 7239 §6: "Note that as ":" and "[]" are not valid characters in "token", IPv6
    // addresses are written as "quoted-string"".
    if peer.is_ipv6() {
        element.push_str("\"[");
        element.push_str(peer_text);
        element.push_str("]\"");
    } else {
        element.push_str(peer_text);
    }
    element.push_str(";proto=");
    element.push_str(proto);
    // RFC 7239 §5.3: "host" carries the original value of the Host header field; quoted,
    // since it may hold a ':' (the authority was validated for routing; the filter is belt
    // and braces for the quoted-string).
    element.push_str(";host=\"");
    element.extend(authority.chars().filter(|c| !matches!(c, '"' | '\\')));
    element.push('"');
    element
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_parse_in_both_families_and_match_by_prefix() {
        let c = cidr("10.0.0.0/8");
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert!(c.contains(ip("10.255.1.2")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(
            !c.contains(ip("::a00:1")),
            "an IPv6 peer is not in an IPv4 network"
        );

        let one = cidr("192.0.2.7");
        assert_eq!(one.to_string(), "192.0.2.7/32");
        assert!(one.contains(ip("192.0.2.7")));
        assert!(!one.contains(ip("192.0.2.8")));

        let v6 = cidr("2001:db8::/32");
        assert!(v6.contains(ip("2001:db8:ffff::1")));
        assert!(!v6.contains(ip("2001:db9::1")));
        assert_eq!(cidr("::1").to_string(), "::1/128");
        assert!(cidr("::1/128").contains(ip("::1")));

        // /0 is every address of its family, and nothing of the other.
        assert!(cidr("0.0.0.0/0").contains(ip("203.0.113.9")));
        assert!(!cidr("0.0.0.0/0").contains(ip("2001:db8::1")));
        assert!(cidr("::/0").contains(ip("2001:db8::1")));
        assert!(cidr("0.0.0.0/0").is_empty());
        // Odd prefix lengths cut inside a byte.
        assert!(cidr("172.16.0.0/12").contains(ip("172.31.255.255")));
        assert!(!cidr("172.16.0.0/12").contains(ip("172.32.0.0")));
        assert!(cidr("2001:db8::/33").contains(ip("2001:db8:7fff::1")));
        assert!(!cidr("2001:db8::/33").contains(ip("2001:db8:8000::1")));
    }

    #[test]
    fn ipv4_mapped_peers_and_networks_compare_as_ipv4() {
        // A dual-stack listener sees an IPv4 client as ::ffff:a.b.c.d.
        assert!(cidr("127.0.0.1/32").contains(ip("::ffff:127.0.0.1")));
        assert!(cidr("10.0.0.0/8").contains(ip("::ffff:10.1.2.3")));
        let mapped = cidr("::ffff:10.0.0.0/104");
        assert_eq!(mapped, cidr("10.0.0.0/8"));
        assert!(mapped.contains(ip("10.9.9.9")));
        assert!(mapped.contains(ip("::ffff:10.9.9.9")));
        assert_eq!(cidr("::ffff:192.0.2.1").to_string(), "192.0.2.1/32");
    }

    #[test]
    fn bad_cidrs_are_refused_with_the_reason() {
        for bad in [
            "",
            "10.0.0",
            "10.0.0.0/",
            "10.0.0.0/33",
            "10.0.0.0/-1",
            "10.0.0.0/+8",
            "10.0.0.0/ 8",
            " 10.0.0.0/8",
            "10.0.0.0/08",
            "[::1]/128",
            "::1/129",
            "fe80::1%eth0/128",
            "10.0.0.0/8/8",
            "example.com/8",
            "10.0.0.0/1000",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?} was accepted");
        }
        assert_eq!(
            "10.0.0.1/8".parse::<Cidr>(),
            Err(CidrError::HostBits {
                text: "10.0.0.1/8".into(),
                network: cidr("10.0.0.0/8"),
            })
        );
        let e = "10.0.0.1/8".parse::<Cidr>().unwrap_err().to_string();
        assert!(e.contains("host bits") && e.contains("10.0.0.0/8"), "{e}");
        let e = "2001:db8::1/32".parse::<Cidr>().unwrap_err().to_string();
        assert!(e.contains("2001:db8::/32"), "{e}");
        let e = "10.0.0.0/33".parse::<Cidr>().unwrap_err().to_string();
        assert!(e.contains("from 0 to 32"), "{e}");
        let e = "::/200".parse::<Cidr>().unwrap_err().to_string();
        assert!(e.contains("from 0 to 128"), "{e}");
        let list = TrustedProxies::parse(&["10.0.0.0/8", "nope/8"]).unwrap_err();
        assert_eq!(list, CidrError::BadAddress("nope/8".into()));
    }

    fn target(uri: &str, host: Option<&str>) -> (Request<()>, RequestTarget) {
        let mut b = Request::get(uri);
        if let Some(h) = host {
            b = b.header("host", h);
        }
        let req = b.body(()).unwrap();
        let (parts, ()) = req.into_parts();
        let t = RequestTarget::from_parts(&parts).unwrap();
        (Request::from_parts(parts, ()), t)
    }

    fn authority(uri: &str, host: Option<&str>) -> String {
        let (req, t) = target(uri, host);
        requested_authority(req.uri(), req.headers(), &t)
    }

    #[test]
    fn the_authority_is_the_one_the_client_wrote() {
        assert_eq!(authority("/x", Some("App.Localhost")), "app.localhost");
        assert_eq!(
            authority("/x", Some("app.localhost:8080")),
            "app.localhost:8080"
        );
        // HTTP/2 and HTTP/3 carry it in :authority; no scheme-default port is invented.
        assert_eq!(authority("https://app.localhost/x", None), "app.localhost");
        assert_eq!(
            authority("http://app.localhost:81/", None),
            "app.localhost:81"
        );
        assert_eq!(authority("http://[::1]/", None), "[::1]");
        assert_eq!(authority("http://[::1]:8080/", None), "[::1]:8080");
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn all(h: &HeaderMap, name: &str) -> Vec<String> {
        h.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    const SPOOFED: &[(&str, &str)] = &[
        ("x-forwarded-for", "10.9.9.9"),
        ("x-forwarded-for", "10.8.8.8, 10.7.7.7"),
        ("x-real-ip", "10.9.9.9"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "evil.example"),
        ("x-forwarded-port", "443"),
        ("forwarded", "for=10.9.9.9;proto=https"),
        ("x-kept", "1"),
        ("ptth-client-port", "1"),
    ];

    #[test]
    fn an_untrusted_peer_s_values_are_replaced_by_what_the_gateway_saw() {
        let mut h = headers(SPOOFED);
        let hop = Hop {
            peer: ip("127.0.0.1"),
            peer_port: 51234,
            tls: false,
            authority: "app.localhost:8080",
        };
        set_forwarding_fields(&mut h, &hop, &TrustedProxies::default());
        assert_eq!(all(&h, "x-forwarded-for"), ["127.0.0.1"]);
        assert_eq!(all(&h, "x-real-ip"), ["127.0.0.1"]);
        assert_eq!(all(&h, "x-forwarded-proto"), ["http"]);
        assert_eq!(all(&h, "x-forwarded-host"), ["app.localhost:8080"]);
        assert!(all(&h, "x-forwarded-port").is_empty());
        assert_eq!(
            all(&h, "forwarded"),
            ["for=127.0.0.1;proto=http;host=\"app.localhost:8080\""]
        );
        assert_eq!(all(&h, "x-kept"), ["1"]);
        assert_eq!(all(&h, "ptth-client-port"), ["51234"]);

        // A trusted list that does not hold the peer changes nothing of that.
        let mut h2 = headers(SPOOFED);
        let other = TrustedProxies::parse(&["10.0.0.0/8", "::1"]).unwrap();
        set_forwarding_fields(&mut h2, &hop, &other);
        assert_eq!(h2, h);
    }

    #[test]
    fn ipv6_and_mapped_peers_are_written_as_rfc_7239_and_applications_expect() {
        let mut h = HeaderMap::new();
        let hop = Hop {
            peer: ip("::1"),
            peer_port: 51234,
            tls: true,
            authority: "app.example:8080",
        };
        set_forwarding_fields(&mut h, &hop, &TrustedProxies::default());
        assert_eq!(
            all(&h, "forwarded"),
            ["for=\"[::1]\";proto=https;host=\"app.example:8080\""]
        );
        assert_eq!(all(&h, "x-forwarded-for"), ["::1"]);
        assert_eq!(all(&h, "x-forwarded-proto"), ["https"]);

        let mut h = HeaderMap::new();
        let hop = Hop {
            peer: ip("::ffff:192.0.2.1"),
            peer_port: 51234,
            tls: false,
            authority: "[::1]:8080",
        };
        set_forwarding_fields(&mut h, &hop, &TrustedProxies::default());
        assert_eq!(all(&h, "x-forwarded-for"), ["192.0.2.1"]);
        assert_eq!(
            all(&h, "forwarded"),
            ["for=192.0.2.1;proto=http;host=\"[::1]:8080\""]
        );
    }

    #[test]
    fn a_trusted_peer_s_values_are_kept_and_appended_to() {
        let trusted = TrustedProxies::parse(&["127.0.0.1/32"]).unwrap();
        let hop = Hop {
            peer: ip("::ffff:127.0.0.1"),
            peer_port: 51234,
            tls: false,
            authority: "app.localhost",
        };
        let mut h = headers(SPOOFED);
        set_forwarding_fields(&mut h, &hop, &trusted);
        assert_eq!(
            all(&h, "x-forwarded-for"),
            ["10.9.9.9, 10.8.8.8, 10.7.7.7, 127.0.0.1"]
        );
        assert_eq!(
            all(&h, "forwarded"),
            ["for=10.9.9.9;proto=https, for=127.0.0.1;proto=http;host=\"app.localhost\""]
        );
        assert_eq!(all(&h, "x-real-ip"), ["10.9.9.9"]);
        assert_eq!(all(&h, "x-forwarded-proto"), ["https"]);
        assert_eq!(all(&h, "x-forwarded-host"), ["evil.example"]);
        assert_eq!(all(&h, "x-forwarded-port"), ["443"]);
        // The client is one the proxy named: the gateway does not know its port.
        assert!(all(&h, "ptth-client-port").is_empty());

        // Nothing sent: the trusted peer's request gets the gateway's values.
        let mut h = HeaderMap::new();
        set_forwarding_fields(&mut h, &hop, &trusted);
        assert_eq!(all(&h, "x-forwarded-for"), ["127.0.0.1"]);
        assert_eq!(all(&h, "x-real-ip"), ["127.0.0.1"]);
        assert_eq!(all(&h, "x-forwarded-proto"), ["http"]);
        assert_eq!(all(&h, "x-forwarded-host"), ["app.localhost"]);
        assert!(all(&h, "x-forwarded-port").is_empty());
        // The trusted peer is the client here, so its port is known.
        assert_eq!(all(&h, "ptth-client-port"), ["51234"]);

        // A port a trusted proxy wrote is not believed either.
        let mut h = headers(&[("ptth-client-port", "1"), ("x-real-ip", "203.0.113.5")]);
        set_forwarding_fields(&mut h, &hop, &trusted);
        assert!(all(&h, "ptth-client-port").is_empty());
        let mut h = headers(&[("ptth-client-port", "1")]);
        set_forwarding_fields(&mut h, &hop, &trusted);
        assert_eq!(all(&h, "ptth-client-port"), ["51234"]);
    }

    #[test]
    fn x_real_ip_from_a_trusted_chain_is_its_first_untrusted_address_from_the_right() {
        let trusted = TrustedProxies::parse(&["10.0.0.0/8"]).unwrap();
        let chain = |s: &str| -> Vec<String> { s.split(", ").map(str::to_owned).collect() };
        // The client, then two trusted proxies, then the peer (trusted).
        assert_eq!(
            client_through(
                &chain("203.0.113.5, 10.1.1.1, 10.2.2.2"),
                ip("10.3.3.3"),
                &trusted
            ),
            ip("203.0.113.5")
        );
        // A client that wrote its own entries before the first proxy: those are not believed.
        assert_eq!(
            client_through(
                &chain("1.1.1.1, 198.51.100.7, 10.1.1.1"),
                ip("10.3.3.3"),
                &trusted
            ),
            ip("198.51.100.7")
        );
        // Garbage stops the walk at the last address read.
        assert_eq!(
            client_through(
                &chain("203.0.113.5, unknown, 10.1.1.1"),
                ip("10.3.3.3"),
                &trusted
            ),
            ip("10.1.1.1")
        );
        // Only trusted addresses: the leftmost.
        assert_eq!(
            client_through(&chain("10.1.1.1"), ip("10.3.3.3"), &trusted),
            ip("10.1.1.1")
        );
        // An untrusted peer is the client.
        assert_eq!(
            client_through(&chain("203.0.113.5"), ip("192.0.2.1"), &trusted),
            ip("192.0.2.1")
        );

        let mut h = headers(&[("x-forwarded-for", "203.0.113.5")]);
        let hop = Hop {
            peer: ip("10.3.3.3"),
            peer_port: 51234,
            tls: true,
            authority: "a.example",
        };
        set_forwarding_fields(&mut h, &hop, &trusted);
        assert_eq!(all(&h, "x-real-ip"), ["203.0.113.5"]);
        assert!(all(&h, "ptth-client-port").is_empty());
        assert_eq!(all(&h, "x-forwarded-for"), ["203.0.113.5, 10.3.3.3"]);
        assert_eq!(all(&h, "x-forwarded-proto"), ["https"]);
    }

    #[test]
    fn a_trusted_peer_s_non_ascii_lines_are_dropped_not_forwarded() {
        let trusted = TrustedProxies::parse(&["127.0.0.1"]).unwrap();
        let mut h = HeaderMap::new();
        h.append(
            X_FORWARDED_FOR,
            HeaderValue::from_bytes(b"\xff\xfe").unwrap(),
        );
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.5"));
        let hop = Hop {
            peer: ip("127.0.0.1"),
            peer_port: 51234,
            tls: false,
            authority: "a.example",
        };
        set_forwarding_fields(&mut h, &hop, &trusted);
        assert_eq!(all(&h, "x-forwarded-for"), ["203.0.113.5, 127.0.0.1"]);
    }
}
