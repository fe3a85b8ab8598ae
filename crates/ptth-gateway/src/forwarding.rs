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
//!   carries the peer's TCP or UDP port to the origin (for PROXY protocol v2 headers);
//! - `--forwarding-fields` ([`ForwardingFields`]) may choose `Forwarded` only, the
//!   `X-Forwarded-*` family (with `X-Real-IP`) only, or none: the fields not chosen are
//!   removed from every request, a trusted proxy's included, and [`PTTH_CLIENT_PORT`] goes
//!   with `X-Real-IP` (without it the origin would have a port and no address).
//!
//! Why a `ptth-*` field and not the port form of `Forwarded` (RFC 7239 §6,
//! `for="192.0.2.7:51234"`): every application behind ptth reads `Forwarded`, and many parse
//! its `for` as a bare address, so adding ports there would change what they all see for the
//! sake of the few routes that write PROXY headers; and behind trusted proxies the origin
//! would have to find the client's element in the chain again. The gateway removes every
//! `ptth-*` field a public client sends (`proxy::strip_ptth_fields`) before this module runs,
//! so an origin reading [`PTTH_CLIENT_PORT`] from its authenticated connection knows the
//! gateway wrote it.

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Uri;
use ptth_core::RequestTarget;
use std::fmt;
use std::net::IpAddr;
use std::ops::Range;
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
        (true, Some(port)) => {
            // Every request with a port passes here: no `format!` (the `fmt` machinery was
            // two thirds of this function's cost).
            let port = StackText::decimal(port);
            let mut text = String::with_capacity(target.host().len() + 1 + port.as_str().len());
            text.push_str(target.host());
            text.push(':');
            text.push_str(port.as_str());
            text
        }
        _ => target.host().to_owned(),
    }
}

/// Which forwarding fields the gateway sends to origins (`--forwarding-fields`, config key
/// `forwarding-fields`). The others are removed, whoever the peer is: from a public client
/// as always, and from a trusted proxy too, since a chain the gateway did not append its hop
/// to would mislead an application that counts hops from the right.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardingFields {
    /// `X-Forwarded-For`, `-Proto`, `-Host`, `X-Real-IP` and `Forwarded` (the default).
    #[default]
    All,
    /// RFC 7239 `Forwarded` only.
    Forwarded,
    /// `X-Forwarded-For`, `-Proto`, `-Host` and `X-Real-IP` only.
    XForwarded,
    /// None: the origin sees no forwarding field at all (every public value still removed).
    None,
}

impl ForwardingFields {
    /// Whether `Forwarded` is sent.
    pub fn forwarded(self) -> bool {
        matches!(self, Self::All | Self::Forwarded)
    }

    /// Whether `X-Forwarded-For`, `-Proto`, `-Host` and `X-Real-IP` are sent, and with
    /// `X-Real-IP` [`PTTH_CLIENT_PORT`] (the port of the client `X-Real-IP` names: without
    /// it the origin has no address to put the port with).
    pub fn x_forwarded(self) -> bool {
        matches!(self, Self::All | Self::XForwarded)
    }
}

impl FromStr for ForwardingFields {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "all" => Ok(Self::All),
            "forwarded" => Ok(Self::Forwarded),
            "x-forwarded" => Ok(Self::XForwarded),
            "none" => Ok(Self::None),
            _ => Err(format!(
                "the forwarding fields are all, forwarded, x-forwarded or none, not {s:?}"
            )),
        }
    }
}

impl fmt::Display for ForwardingFields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::All => "all",
            Self::Forwarded => "forwarded",
            Self::XForwarded => "x-forwarded",
            Self::None => "none",
        })
    }
}

/// Sets the forwarding fields of a public request from `hop` (see the module docs), keeping
/// and appending to the peer's own values only when the peer is in `trusted`: every field,
/// as [`ForwardingFields::All`] does in [`set_chosen_forwarding_fields`].
pub fn set_forwarding_fields(headers: &mut HeaderMap, hop: &Hop<'_>, trusted: &TrustedProxies) {
    set_chosen_forwarding_fields(headers, hop, trusted, ForwardingFields::All);
}

/// Sets the forwarding fields `chosen` names (see the module docs) and removes the others,
/// keeping and appending to the peer's own values only when the peer is in `trusted`.
pub fn set_chosen_forwarding_fields(
    headers: &mut HeaderMap,
    hop: &Hop<'_>,
    trusted: &TrustedProxies,
    chosen: ForwardingFields,
) {
    let peer = hop.peer.to_canonical();
    if !trusted.contains(peer) {
        set_untrusted(headers, hop, peer, chosen);
    } else {
        set_trusted(headers, hop, peer, trusted, chosen);
    }
}

/// The fields for a peer outside the trusted list: every value it wrote removed, the chosen
/// fields set from what the gateway saw.
///
/// Every request passes here, so the values are written once into one buffer (the peer's
/// address formatted once, no `String` per field) and each field is a slice of it: one
/// allocation for the buffer (and one for sharing it) instead of one per value.
fn set_untrusted(headers: &mut HeaderMap, hop: &Hop<'_>, peer: IpAddr, chosen: ForwardingFields) {
    // Most requests carry none of these fields: one look at the names present is cheaper
    // than six removals by name.
    if headers
        .keys()
        .any(|k| FORWARDING_FIELDS.iter().any(|f| f == k))
    {
        for name in FORWARDING_FIELDS {
            headers.remove(name);
        }
    }
    let (x_forwarded, forwarded) = (chosen.x_forwarded(), chosen.forwarded());
    if !x_forwarded {
        // The port goes with `X-Real-IP`; without it there is no address to pair it with.
        // (The proxy removed every public `ptth-*` field already; this holds on its own.)
        headers.remove(PTTH_CLIENT_PORT);
        if !forwarded {
            return;
        }
    }
    let proto = if hop.tls { "https" } else { "http" };
    let peer_text = StackText::ip(peer);
    let peer_text = peer_text.as_bytes();
    let mut buf = BytesMut::with_capacity(2 * (peer_text.len() + hop.authority.len()) + 40);
    let peer_range = x_forwarded.then(|| put(&mut buf, peer_text));
    let authority = x_forwarded.then(|| put(&mut buf, hop.authority.as_bytes()));
    let element = forwarded.then(|| {
        let start = buf.len();
        put_forwarded_element(&mut buf, peer.is_ipv6(), peer_text, proto, hop.authority);
        start..buf.len()
    });
    let port = x_forwarded.then(|| put(&mut buf, StackText::decimal(hop.peer_port).as_bytes()));
    let buf = buf.freeze();
    // Room for the fields at once, so the map grows (and rehashes) once at most.
    headers.reserve(5 * usize::from(x_forwarded) + usize::from(forwarded));
    // Each value is checked once (a vectorised pass, no copy): the peer's text and the port
    // are the gateway's own digits, dots and colons, but the authority came from the client
    // (validated for routing): a value that is not a field value is left out, never sent.
    if let (Some(peer_range), Some(authority), Some(port)) = (peer_range, authority, port) {
        let peer_value = HeaderValue::from_maybe_shared(buf.slice(peer_range)).ok();
        insert_value(headers, X_FORWARDED_FOR, peer_value.clone());
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
        insert_value(headers, X_FORWARDED_HOST, shared_value(&buf, authority));
        insert_value(headers, X_REAL_IP, peer_value);
        if let Some(element) = element {
            insert_value(headers, header::FORWARDED, shared_value(&buf, element));
        }
        insert_value(headers, PTTH_CLIENT_PORT, shared_value(&buf, port));
    } else if let Some(element) = element {
        insert_value(headers, header::FORWARDED, shared_value(&buf, element));
    }
}

/// The fields for a trusted proxy: its chains kept with this hop appended, its other values
/// kept, the fields not chosen removed.
fn set_trusted(
    headers: &mut HeaderMap,
    hop: &Hop<'_>,
    peer: IpAddr,
    trusted: &TrustedProxies,
    chosen: ForwardingFields,
) {
    let text = StackText::ip(peer);
    let peer_text = text.as_str();
    let proto = if hop.tls { "https" } else { "http" };
    let theirs = list_values(headers, &X_FORWARDED_FOR);
    if chosen.x_forwarded() {
        // A trusted proxy: its chain is kept and this hop appended, as one field line each
        // (some applications read only the first line of a field).
        let mut chain = theirs.clone();
        chain.push(peer_text.to_owned());
        insert(headers, X_FORWARDED_FOR, &chain.join(", "));
    } else {
        for name in [
            X_FORWARDED_FOR,
            X_FORWARDED_PROTO,
            X_FORWARDED_HOST,
            X_FORWARDED_PORT,
            X_REAL_IP,
        ] {
            headers.remove(name);
        }
    }
    if chosen.forwarded() {
        // Forwarded lines are kept whole: a quoted-string may hold a comma.
        let mut elements: Vec<String> = headers
            .get_all(header::FORWARDED)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        elements.push(forwarded_element(peer, peer_text, proto, hop.authority));
        insert(headers, header::FORWARDED, &elements.join(", "));
    } else {
        headers.remove(header::FORWARDED);
    }
    if chosen.x_forwarded() {
        if !headers.contains_key(X_FORWARDED_PROTO) {
            insert(headers, X_FORWARDED_PROTO, proto);
        }
        if !headers.contains_key(X_FORWARDED_HOST) {
            insert(headers, X_FORWARDED_HOST, hop.authority);
        }
    }
    headers.remove(PTTH_CLIENT_PORT);
    if !chosen.x_forwarded() {
        return;
    }
    if !headers.contains_key(X_REAL_IP) {
        let client = client_through(&theirs, peer, trusted);
        insert(headers, X_REAL_IP, StackText::ip(client).as_str());
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

/// One RFC 7239 `Forwarded` element for this hop, as text.
fn forwarded_element(peer: IpAddr, peer_text: &str, proto: &str, authority: &str) -> String {
    let mut element = Vec::with_capacity(peer_text.len() + authority.len() + 32);
    put_forwarded_element(
        &mut element,
        peer.is_ipv6(),
        peer_text.as_bytes(),
        proto,
        authority,
    );
    // Only ASCII and whole UTF-8 characters of `authority` were written.
    String::from_utf8(element).unwrap_or_default()
}

/// Writes one RFC 7239 `Forwarded` element for this hop to `out`.
fn put_forwarded_element(
    out: &mut impl BufMut,
    ipv6: bool,
    peer_text: &[u8],
    proto: &str,
    authority: &str,
) {
    out.put_slice(b"for=");
    // RFC 7239 §6: "Note that as ":" and "[]" are not valid characters in "token", IPv6
    // addresses are written as "quoted-string"".
    if ipv6 {
        out.put_slice(b"\"[");
        out.put_slice(peer_text);
        out.put_slice(b"]\"");
    } else {
        out.put_slice(peer_text);
    }
    out.put_slice(b";proto=");
    out.put_slice(proto.as_bytes());
    // RFC 7239 §5.3: "host" carries the original value of the Host header field; quoted,
    // since it may hold a ':' (the authority was validated for routing; the filter is belt
    // and braces for the quoted-string; neither octet occurs inside a UTF-8 character).
    out.put_slice(b";host=\"");
    let authority = authority.as_bytes();
    if authority.iter().any(|b| matches!(b, b'"' | b'\\')) {
        for &b in authority.iter().filter(|b| !matches!(b, b'"' | b'\\')) {
            out.put_u8(b);
        }
    } else {
        out.put_slice(authority);
    }
    out.put_u8(b'"');
}

/// Appends `bytes` to `buf` and returns where they are.
fn put(buf: &mut BytesMut, bytes: &[u8]) -> Range<usize> {
    let start = buf.len();
    buf.extend_from_slice(bytes);
    start..buf.len()
}

/// The field value at `range` of `buf`, sharing its storage; `None` when it is not one.
fn shared_value(buf: &Bytes, range: Range<usize>) -> Option<HeaderValue> {
    HeaderValue::from_maybe_shared(buf.slice(range)).ok()
}

/// Sets `name` to `value`, or removes it when there is no valid value.
fn insert_value(headers: &mut HeaderMap, name: HeaderName, value: Option<HeaderValue>) {
    match value {
        Some(v) => {
            headers.insert(name, v);
        }
        None => {
            headers.remove(name);
        }
    }
}

/// Text up to [`StackText::CAPACITY`] octets on the stack: an address or a port, formatted
/// once per request without the `fmt` machinery (IPv4, ports) or a heap `String`.
struct StackText {
    buf: [u8; StackText::CAPACITY],
    len: usize,
}

impl StackText {
    /// The longest address text: an IPv6 address ending in dotted IPv4
    /// (`ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255`); std writes at most 39 octets of hex
    /// for the canonical (non-mapped) addresses the gateway formats.
    const CAPACITY: usize = 45;

    fn empty() -> Self {
        Self {
            buf: [0; Self::CAPACITY],
            len: 0,
        }
    }

    /// `ip` as std writes it (IPv4 dotted decimal; IPv6 per RFC 5952 through `fmt`).
    fn ip(ip: IpAddr) -> Self {
        let mut text = Self::empty();
        match ip {
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        text.push(b'.');
                    }
                    text.push_decimal(u16::from(octet));
                }
            }
            IpAddr::V6(v6) => {
                // Cannot fail: every IPv6 text fits (see CAPACITY).
                let _ = fmt::Write::write_fmt(&mut text, format_args!("{v6}"));
            }
        }
        text
    }

    /// `n` in decimal.
    fn decimal(n: u16) -> Self {
        let mut text = Self::empty();
        text.push_decimal(n);
        text
    }

    fn push(&mut self, b: u8) {
        if let Some(slot) = self.buf.get_mut(self.len) {
            *slot = b;
            self.len += 1;
        }
    }

    fn push_decimal(&mut self, n: u16) {
        let mut divisor = 10_000;
        while divisor > 1 && n < divisor {
            divisor /= 10;
        }
        while divisor > 0 {
            // A digit: (n / divisor) % 10 is below 10.
            self.push(b'0' + ((n / divisor) % 10) as u8);
            divisor /= 10;
        }
    }

    fn as_bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or_default()
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }
}

impl fmt::Write for StackText {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        self.buf
            .get_mut(self.len..end)
            .ok_or(fmt::Error)?
            .copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
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

    /// The seven names the gateway may write, for "only these" checks.
    const WRITTEN: [&str; 7] = [
        "x-forwarded-for",
        "x-real-ip",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-forwarded-port",
        "forwarded",
        "ptth-client-port",
    ];

    /// The names of `WRITTEN` that `h` holds.
    fn present(h: &HeaderMap) -> Vec<&'static str> {
        WRITTEN.into_iter().filter(|n| h.contains_key(*n)).collect()
    }

    fn chosen(
        pairs: &[(&str, &str)],
        hop: &Hop<'_>,
        trusted: &TrustedProxies,
        fields: ForwardingFields,
    ) -> HeaderMap {
        let mut h = headers(pairs);
        set_chosen_forwarding_fields(&mut h, hop, trusted, fields);
        h
    }

    #[test]
    fn forwarding_fields_settings_parse_and_name_the_choices() {
        for (text, fields) in [
            ("all", ForwardingFields::All),
            ("forwarded", ForwardingFields::Forwarded),
            ("x-forwarded", ForwardingFields::XForwarded),
            ("none", ForwardingFields::None),
        ] {
            assert_eq!(text.parse(), Ok(fields));
            assert_eq!(fields.to_string(), text);
        }
        assert_eq!(ForwardingFields::default(), ForwardingFields::All);
        for bad in [
            "",
            "All",
            "x-forwarded-for",
            "forwarded,x-forwarded",
            " none",
        ] {
            let err = bad.parse::<ForwardingFields>().unwrap_err();
            assert!(err.contains("all, forwarded, x-forwarded or none"), "{err}");
        }
    }

    #[test]
    fn from_an_untrusted_peer_each_setting_sends_its_fields_and_no_public_value() {
        let untrusted = TrustedProxies::default();
        let hop = Hop {
            peer: ip("127.0.0.1"),
            peer_port: 51234,
            tls: false,
            authority: "app.localhost:8080",
        };
        let every = chosen(SPOOFED, &hop, &untrusted, ForwardingFields::All);

        let h = chosen(SPOOFED, &hop, &untrusted, ForwardingFields::Forwarded);
        assert_eq!(present(&h), ["forwarded"]);
        assert_eq!(h.get_all("forwarded").iter().count(), 1);
        assert_eq!(h.get("forwarded"), every.get("forwarded"));
        assert_eq!(all(&h, "x-kept"), ["1"]);

        let h = chosen(SPOOFED, &hop, &untrusted, ForwardingFields::XForwarded);
        assert_eq!(
            present(&h),
            [
                "x-forwarded-for",
                "x-real-ip",
                "x-forwarded-proto",
                "x-forwarded-host",
                "ptth-client-port"
            ]
        );
        let mut expected = every.clone();
        expected.remove("forwarded");
        assert_eq!(h, expected, "all but Forwarded, the same values");
        assert_eq!(all(&h, "x-forwarded-for"), ["127.0.0.1"]);
        assert_eq!(all(&h, "ptth-client-port"), ["51234"]);

        // None: every value the client wrote is still removed, `ptth-client-port` included,
        // and nothing is set in their place.
        let h = chosen(SPOOFED, &hop, &untrusted, ForwardingFields::None);
        assert_eq!(present(&h), [] as [&str; 0]);
        assert_eq!(all(&h, "x-kept"), ["1"]);
        assert_eq!(h.len(), 1);

        // IPv6 in the `Forwarded`-only buffer, quoted as with every field.
        let hop6 = Hop {
            peer: ip("2001:db8::7"),
            tls: true,
            ..hop
        };
        let h = chosen(&[], &hop6, &untrusted, ForwardingFields::Forwarded);
        assert_eq!(
            all(&h, "forwarded"),
            ["for=\"[2001:db8::7]\";proto=https;host=\"app.localhost:8080\""]
        );
    }

    #[test]
    fn from_a_trusted_peer_each_setting_keeps_only_its_fields() {
        let trusted = TrustedProxies::parse(&["127.0.0.1/32"]).unwrap();
        let hop = Hop {
            peer: ip("127.0.0.1"),
            peer_port: 51234,
            tls: false,
            authority: "app.localhost",
        };
        let h = chosen(SPOOFED, &hop, &trusted, ForwardingFields::Forwarded);
        assert_eq!(present(&h), ["forwarded"]);
        assert_eq!(
            all(&h, "forwarded"),
            ["for=10.9.9.9;proto=https, for=127.0.0.1;proto=http;host=\"app.localhost\""]
        );

        let h = chosen(SPOOFED, &hop, &trusted, ForwardingFields::XForwarded);
        assert_eq!(
            present(&h),
            [
                "x-forwarded-for",
                "x-real-ip",
                "x-forwarded-proto",
                "x-forwarded-host",
                "x-forwarded-port"
            ]
        );
        assert_eq!(
            all(&h, "x-forwarded-for"),
            ["10.9.9.9, 10.8.8.8, 10.7.7.7, 127.0.0.1"]
        );
        assert_eq!(all(&h, "x-real-ip"), ["10.9.9.9"]);
        assert_eq!(all(&h, "x-forwarded-port"), ["443"]);

        let h = chosen(SPOOFED, &hop, &trusted, ForwardingFields::None);
        assert_eq!(present(&h), [] as [&str; 0]);
        assert_eq!(all(&h, "x-kept"), ["1"]);

        // The peer is the client (no chain): its port goes with X-Real-IP, not without it.
        let h = chosen(&[], &hop, &trusted, ForwardingFields::XForwarded);
        assert_eq!(all(&h, "x-real-ip"), ["127.0.0.1"]);
        assert_eq!(all(&h, "ptth-client-port"), ["51234"]);
        let h = chosen(&[], &hop, &trusted, ForwardingFields::Forwarded);
        assert_eq!(present(&h), ["forwarded"]);
    }

    #[test]
    fn an_authority_that_is_no_field_value_is_left_out_and_quotes_are_dropped_from_forwarded() {
        let untrusted = TrustedProxies::default();
        let hop = Hop {
            peer: ip("192.0.2.1"),
            peer_port: 1,
            tls: false,
            authority: "a\u{1}b",
        };
        let h = chosen(&[], &hop, &untrusted, ForwardingFields::All);
        assert_eq!(
            present(&h),
            [
                "x-forwarded-for",
                "x-real-ip",
                "x-forwarded-proto",
                "ptth-client-port"
            ]
        );
        let hop = Hop {
            authority: "a\"b\\c",
            ..hop
        };
        let h = chosen(&[], &hop, &untrusted, ForwardingFields::All);
        assert_eq!(all(&h, "x-forwarded-host"), ["a\"b\\c"]);
        assert_eq!(
            all(&h, "forwarded"),
            ["for=192.0.2.1;proto=http;host=\"abc\""]
        );
    }

    #[test]
    fn addresses_and_ports_are_written_as_std_writes_them() {
        for text in [
            "0.0.0.0",
            "9.10.99.100",
            "255.255.255.255",
            "::",
            "::1",
            "2001:db8::7",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "::ffff:10.1.2.3",
            "fe80::1:2:3:4",
        ] {
            let addr = ip(text);
            assert_eq!(StackText::ip(addr).as_str(), addr.to_string(), "{text}");
        }
        for n in [0, 1, 9, 10, 99, 100, 999, 1000, 9999, 10000, 51234, 65535] {
            assert_eq!(StackText::decimal(n).as_str(), n.to_string());
        }
    }
}
