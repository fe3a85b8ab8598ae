//! Reverse CONNECT (draft-rosomakho-masque-reverse-connect-01): the listener control
//! channel's capsules and a sans-IO state machine for each end of one channel.
//!
//! In the draft's terms the **proxy client** is ptth's origin (it dials out and offers
//! local TCP and UDP services) and the **proxy server** is ptth's gateway (it asks the
//! origin to accept inbound flows). On a `connect-listen` channel:
//!
//! | capsule | direction | value |
//! |---|---|---|
//! | `AVAILABLE_SERVICES` | origin → gateway | `Service ...` (a hint; each replaces the last) |
//! | `CONNECTION_REQUEST` | gateway → origin | `Request ID (i)`, `Service` |
//! | `CONNECTION_REQUEST_DECLINED` | origin → gateway | `Request ID (i)` |
//!
//! ```text
//! Service {
//!   Destination Type (8),    0 local, 1 hostname (Length (i) + bytes), 4 IPv4, 6 IPv6
//!   Destination (..),
//!   Protocol (8),            6 TCP, 17 UDP
//!   Port (16),
//! }
//! ```
//!
//! The capsule type code points are private (see [`CapsuleType::CONNECTION_REQUEST`]).
//! [`GatewayChannel`] and [`OriginChannel`] keep the per-channel rules: request IDs are
//! unique and bounded in number, a decline must name an outstanding request, and a
//! duplicate request ID is a capsule error.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::capsule::{Capsule, CapsuleType};
use crate::stream_id::{decode_varint, encode_varint, VARINT_MAX};

/// The longest hostname a `Service` may carry (RFC 1035 §2.3.4: 255 octets on the wire,
/// 253 characters as text).
pub const MAX_HOSTNAME_LEN: usize = 253;

/// The most services one `AVAILABLE_SERVICES` capsule may list by default.
pub const DEFAULT_MAX_SERVICES: usize = 256;

/// The largest control-channel capsule value a receiver needs to accept by default:
/// [`DEFAULT_MAX_SERVICES`] hostname services of the longest kind.
pub const DEFAULT_MAX_CONTROL_CAPSULE: usize =
    DEFAULT_MAX_SERVICES * (1 + 2 + MAX_HOSTNAME_LEN + 3);

/// A transport protocol a service uses (the `Protocol (8)` field, and `ipproto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpProtocol {
    /// TCP (6).
    Tcp,
    /// UDP (17).
    Udp,
}

impl IpProtocol {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
        }
    }

    /// From the IP protocol number; the draft allows only 6 and 17.
    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            6 => Some(Self::Tcp),
            17 => Some(Self::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for IpProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        })
    }
}

/// A checked DNS hostname: 1 to 253 characters, dot-separated labels of 1 to 63 ASCII
/// letters, digits, `-` or `_`, no label starting or ending with `-`. Stored lowercase.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hostname(String);

impl Hostname {
    /// Checks `text`; `None` if it is not a hostname.
    pub fn new(text: &str) -> Option<Self> {
        let name = text.strip_suffix('.').unwrap_or(text);
        let ok = !name.is_empty()
            && name.len() <= MAX_HOSTNAME_LEN
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        ok.then(|| Self(name.to_ascii_lowercase()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a service lives, seen from the origin (the `Destination Type` and
/// `Destination` fields).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Destination {
    /// Type 0: "Destination is local for the client."
    Local,
    /// Type 1: a hostname.
    Hostname(Hostname),
    /// Type 4: an IPv4 address.
    Ipv4(Ipv4Addr),
    /// Type 6: an IPv6 address.
    Ipv6(Ipv6Addr),
}

impl Destination {
    fn type_byte(&self) -> u8 {
        match self {
            Self::Local => 0,
            Self::Hostname(_) => 1,
            Self::Ipv4(_) => 4,
            Self::Ipv6(_) => 6,
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Local => f.write_str("local"),
            Self::Hostname(h) => write!(f, "{h}"),
            Self::Ipv4(a) => write!(f, "{a}"),
            Self::Ipv6(a) => write!(f, "[{a}]"),
        }
    }
}

/// A port that can name a service: 1 to 65535 (port 0 names nothing to connect to).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServicePort(u16);

impl ServicePort {
    /// `None` for 0.
    pub fn new(port: u16) -> Option<Self> {
        (port != 0).then_some(Self(port))
    }

    /// The port number.
    pub fn get(self) -> u16 {
        self.0
    }
}

/// One service record: a destination, a protocol and a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Service {
    /// Where.
    pub destination: Destination,
    /// TCP or UDP.
    pub protocol: IpProtocol,
    /// Which port.
    pub port: ServicePort,
}

impl Service {
    /// A local service (destination type 0), the common case: `ssh` on local TCP 22.
    pub fn local(protocol: IpProtocol, port: ServicePort) -> Self {
        Self {
            destination: Destination::Local,
            protocol,
            port,
        }
    }

    /// Appends the encoded record.
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u8(self.destination.type_byte());
        match &self.destination {
            Destination::Local => {}
            Destination::Hostname(h) => {
                // A Hostname is at most 253 bytes, so the varint cannot fail.
                let _ = encode_varint(h.0.len() as u64, out);
                out.put_slice(h.0.as_bytes());
            }
            Destination::Ipv4(a) => out.put_slice(&a.octets()),
            Destination::Ipv6(a) => out.put_slice(&a.octets()),
        }
        out.put_u8(self.protocol.number());
        out.put_u16(self.port.0);
    }

    /// Reads one record from the front of `buf`.
    pub fn decode(buf: &mut impl Buf) -> Result<Self, MalformedCapsule> {
        let kind = take_u8(buf, "Destination Type")?;
        let destination = match kind {
            0 => Destination::Local,
            1 => {
                let len = decode_varint(buf)
                    .map_err(|_| MalformedCapsule::Truncated("hostname length"))?;
                let len = usize::try_from(len)
                    .ok()
                    .filter(|&l| l <= MAX_HOSTNAME_LEN)
                    .ok_or(MalformedCapsule::HostnameTooLong(len))?;
                if buf.remaining() < len {
                    return Err(MalformedCapsule::Truncated("hostname"));
                }
                let mut raw = vec![0; len];
                buf.copy_to_slice(&mut raw);
                let text = std::str::from_utf8(&raw).map_err(|_| MalformedCapsule::BadHostname)?;
                Destination::Hostname(Hostname::new(text).ok_or(MalformedCapsule::BadHostname)?)
            }
            4 => {
                let mut octets = [0; 4];
                take(buf, &mut octets, "IPv4 address")?;
                Destination::Ipv4(Ipv4Addr::from(octets))
            }
            6 => {
                let mut octets = [0; 16];
                take(buf, &mut octets, "IPv6 address")?;
                Destination::Ipv6(Ipv6Addr::from(octets))
            }
            other => return Err(MalformedCapsule::DestinationType(other)),
        };
        let proto = take_u8(buf, "Protocol")?;
        let protocol = IpProtocol::from_number(proto).ok_or(MalformedCapsule::Protocol(proto))?;
        let mut port = [0; 2];
        take(buf, &mut port, "Port")?;
        let port = ServicePort::new(u16::from_be_bytes(port)).ok_or(MalformedCapsule::PortZero)?;
        Ok(Self {
            destination,
            protocol,
            port,
        })
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.destination, self.port.0, self.protocol)
    }
}

fn take_u8(buf: &mut impl Buf, field: &'static str) -> Result<u8, MalformedCapsule> {
    if buf.remaining() < 1 {
        return Err(MalformedCapsule::Truncated(field));
    }
    Ok(buf.get_u8())
}

fn take(buf: &mut impl Buf, out: &mut [u8], field: &'static str) -> Result<(), MalformedCapsule> {
    if buf.remaining() < out.len() {
        return Err(MalformedCapsule::Truncated(field));
    }
    buf.copy_to_slice(out);
    Ok(())
}

/// A request ID: a varint (0 to 2^62 − 1), unique on its listener control channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(u64);

impl RequestId {
    /// `None` above 2^62 − 1.
    pub fn new(id: u64) -> Option<Self> {
        (id <= VARINT_MAX).then_some(Self(id))
    }

    /// The value.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Why a reverse-connect capsule value is malformed. Always the sender's doing; RFC 9297
/// §3.3 applies ("MUST follow the error-handling procedure defined in Section 3.3 of
/// HTTP-DGRAM").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MalformedCapsule {
    /// The value ended inside a field.
    #[error("the value ends inside its {0} field")]
    Truncated(&'static str),
    /// Bytes after the last field.
    #[error("{0} bytes follow the last field")]
    TrailingBytes(usize),
    /// A Destination Type other than 0, 1, 4 or 6.
    #[error("destination type {0} is not 0, 1, 4 or 6")]
    DestinationType(u8),
    /// A hostname longer than 253 bytes.
    #[error("hostname of {0} bytes (at most 253)")]
    HostnameTooLong(u64),
    /// A hostname that is not a DNS name.
    #[error("hostname is not a DNS name")]
    BadHostname,
    /// A protocol other than 6 and 17.
    #[error("protocol {0} is neither TCP (6) nor UDP (17)")]
    Protocol(u8),
    /// Port 0.
    #[error("port 0 names no service")]
    PortZero,
    /// More services than the receiver takes.
    #[error("more than {0} services")]
    TooManyServices(usize),
}

/// `AVAILABLE_SERVICES`: the services the origin offers (a hint; each replaces the last).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AvailableServices {
    /// The services, in the sender's order.
    pub services: Vec<Service>,
}

/// `CONNECTION_REQUEST`: the gateway asks the origin to accept one inbound flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionRequest {
    /// Unique on the channel.
    pub id: RequestId,
    /// The service the flow is for.
    pub service: Service,
}

/// `CONNECTION_REQUEST_DECLINED`: the origin will not accept request `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionRequestDeclined {
    /// An outstanding request's ID.
    pub id: RequestId,
}

/// A reverse-connect control capsule, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlCapsule {
    /// `AVAILABLE_SERVICES`.
    AvailableServices(AvailableServices),
    /// `CONNECTION_REQUEST`.
    ConnectionRequest(ConnectionRequest),
    /// `CONNECTION_REQUEST_DECLINED`.
    ConnectionRequestDeclined(ConnectionRequestDeclined),
}

/// A malformed capsule and which one it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {kind}: {why}")]
#[non_exhaustive]
pub struct ControlCapsuleError {
    /// The capsule type.
    pub kind: CapsuleType,
    /// What is wrong with it.
    pub why: MalformedCapsule,
}

impl ControlCapsule {
    /// The capsule type.
    pub fn kind(&self) -> CapsuleType {
        match self {
            Self::AvailableServices(_) => CapsuleType::AVAILABLE_SERVICES,
            Self::ConnectionRequest(_) => CapsuleType::CONNECTION_REQUEST,
            Self::ConnectionRequestDeclined(_) => CapsuleType::CONNECTION_REQUEST_DECLINED,
        }
    }

    /// Encodes the capsule.
    pub fn to_capsule(&self) -> Capsule {
        let mut value = BytesMut::new();
        match self {
            Self::AvailableServices(list) => {
                for s in &list.services {
                    s.encode(&mut value);
                }
            }
            Self::ConnectionRequest(r) => {
                let _ = encode_varint(r.id.0, &mut value);
                r.service.encode(&mut value);
            }
            Self::ConnectionRequestDeclined(d) => {
                let _ = encode_varint(d.id.0, &mut value);
            }
        }
        Capsule::new(self.kind(), value.freeze())
    }

    /// Parses `capsule` if it is one of the three; `Ok(None)` for any other type, which
    /// the caller skips (RFC 9297 §3.2). `max_services` bounds `AVAILABLE_SERVICES`.
    pub fn parse(
        capsule: &Capsule,
        max_services: usize,
    ) -> Result<Option<Self>, ControlCapsuleError> {
        let kind = capsule.kind;
        let mut value: Bytes = capsule.value.clone();
        let err = |why| ControlCapsuleError { kind, why };
        let parsed = match kind {
            CapsuleType::AVAILABLE_SERVICES => {
                let mut services = Vec::new();
                while value.has_remaining() {
                    if services.len() == max_services {
                        return Err(err(MalformedCapsule::TooManyServices(max_services)));
                    }
                    services.push(Service::decode(&mut value).map_err(err)?);
                }
                Self::AvailableServices(AvailableServices { services })
            }
            CapsuleType::CONNECTION_REQUEST => {
                let id = request_id(&mut value).map_err(err)?;
                let service = Service::decode(&mut value).map_err(err)?;
                Self::ConnectionRequest(ConnectionRequest { id, service })
            }
            CapsuleType::CONNECTION_REQUEST_DECLINED => {
                let id = request_id(&mut value).map_err(err)?;
                Self::ConnectionRequestDeclined(ConnectionRequestDeclined { id })
            }
            _ => return Ok(None),
        };
        if value.has_remaining() {
            return Err(err(MalformedCapsule::TrailingBytes(value.remaining())));
        }
        Ok(Some(parsed))
    }
}

fn request_id(buf: &mut Bytes) -> Result<RequestId, MalformedCapsule> {
    decode_varint(buf)
        .map(RequestId)
        .map_err(|_| MalformedCapsule::Truncated("Request ID"))
}

/// Unique, unpredictable-looking request IDs in O(1) memory: a keyed bijection of a
/// counter on 62-bit values, so no ID repeats before 2^62 of them.
///
/// draft-rosomakho-masque-reverse-connect-01 §Security: "HTTP/1.1 Reverse Connect
/// proxies SHOULD generate Request ID randomly instead of using a predictable sequence",
/// and §Requesting Connection: "The Request ID MUST be unique for a given Listener
/// Control Channel". A set of every ID ever used would grow without bound; a permutation
/// of a counter keyed with a random value from the caller (this crate has no randomness)
/// is unique by construction. It is not a cipher: the accept request must still be
/// authenticated as the channel's identity (the draft's "MUST consistently authenticate
/// clients on both Listener Control Channel and individual Connection Acceptance
/// Requests").
#[derive(Debug, Clone)]
pub struct RequestIdSequence {
    key: [u64; 2],
    next: u64,
}

impl RequestIdSequence {
    /// A sequence keyed by `key` (give it random bytes).
    pub fn new(key: [u8; 16]) -> Self {
        let mut a = [0; 8];
        let mut b = [0; 8];
        a.copy_from_slice(&key[..8]);
        b.copy_from_slice(&key[8..]);
        Self {
            key: [u64::from_le_bytes(a), u64::from_le_bytes(b)],
            next: 0,
        }
    }

    /// The next ID; `None` once 2^62 IDs have been handed out.
    pub fn next_id(&mut self) -> Option<RequestId> {
        if self.next > VARINT_MAX {
            return None;
        }
        let id = permute(self.next, self.key);
        self.next += 1;
        Some(RequestId(id))
    }
}

/// A bijection on 0..2^62: xor with a key, multiply by an odd constant, xor-shift right
/// (each step is invertible modulo 2^62), twice.
fn permute(x: u64, key: [u64; 2]) -> u64 {
    const MASK: u64 = VARINT_MAX;
    let mut x = x & MASK;
    for (k, m) in [
        (key[0], 0x1d8e_4e27_c47d_124f_u64),
        (key[1], 0x2545_f491_4f6c_dd1d_u64),
    ] {
        x ^= k & MASK;
        x = x.wrapping_mul(m | 1) & MASK;
        x ^= x >> 29;
    }
    x
}

/// A breach of the channel rules, and who committed it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelError {
    /// The peer sent a malformed capsule.
    #[error("{peer} sent a {0}", peer = .1)]
    Malformed(ControlCapsuleError, Peer),
    /// The peer sent a capsule only the other side sends.
    #[error("{1} sent {0}, which only the {peer} sends", peer = .1.other())]
    WrongDirection(CapsuleType, Peer),
    /// The gateway reused a request ID on this channel.
    #[error("gateway reused request ID {0} on this channel")]
    DuplicateRequestId(RequestId),
    /// The origin declined a request that is not outstanding.
    #[error("origin declined request {0}, which is not outstanding on this channel")]
    UnknownDecline(RequestId),
    /// The gateway has as many outstanding requests as this channel allows (local).
    #[error("{0} connection requests already outstanding on this channel")]
    TooManyOutstanding(usize),
    /// The gateway ran out of request IDs (after 2^62; local).
    #[error("request IDs exhausted on this channel")]
    IdsExhausted,
    /// The origin asked to decline or accept a request it does not hold (local).
    #[error("request {0} is not pending on this channel")]
    NotPending(RequestId),
}

impl ChannelError {
    /// Whether the peer caused it (then the channel is malformed, RFC 9297 §3.3, and the
    /// stream must be aborted); otherwise it is a local refusal and the channel goes on.
    pub fn is_peer_error(&self) -> bool {
        matches!(
            self,
            Self::Malformed(..)
                | Self::WrongDirection(..)
                | Self::DuplicateRequestId(_)
                | Self::UnknownDecline(_)
        )
    }
}

/// Which end of a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// The proxy client.
    Origin,
    /// The proxy server.
    Gateway,
}

impl Peer {
    fn other(self) -> Self {
        match self {
            Self::Origin => Self::Gateway,
            Self::Gateway => Self::Origin,
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Origin => "origin",
            Self::Gateway => "gateway",
        })
    }
}

/// What a capsule from the origin means to the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayEvent {
    /// The origin replaced its advertised services ([`GatewayChannel::advertised`]).
    ServicesAdvertised,
    /// The origin declined request `id` (for `service`): fail the inbound flow.
    Declined {
        /// The request.
        id: RequestId,
        /// What it asked for.
        service: Service,
    },
}

/// The gateway's end of one `connect-listen` channel.
#[derive(Debug, Clone)]
pub struct GatewayChannel {
    ids: RequestIdSequence,
    outstanding: HashMap<RequestId, Service>,
    max_outstanding: usize,
    max_services: usize,
    advertised: Vec<Service>,
}

impl GatewayChannel {
    /// A channel that allows `max_outstanding` requests awaiting an accept or a decline,
    /// with request IDs keyed by `id_key` (random bytes).
    pub fn new(id_key: [u8; 16], max_outstanding: usize) -> Self {
        Self {
            ids: RequestIdSequence::new(id_key),
            outstanding: HashMap::new(),
            max_outstanding,
            max_services: DEFAULT_MAX_SERVICES,
            advertised: Vec::new(),
        }
    }

    /// The services the origin last advertised (empty until it does). A hint only: the
    /// gateway still checks them against the identity's grants.
    pub fn advertised(&self) -> &[Service] {
        &self.advertised
    }

    /// How many requests await an accept or a decline.
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    /// Issues a `CONNECTION_REQUEST` for `service`: its ID and the capsule to send.
    pub fn request(&mut self, service: Service) -> Result<(RequestId, Capsule), ChannelError> {
        if self.outstanding.len() >= self.max_outstanding {
            return Err(ChannelError::TooManyOutstanding(self.max_outstanding));
        }
        let id = self.ids.next_id().ok_or(ChannelError::IdsExhausted)?;
        let capsule = ControlCapsule::ConnectionRequest(ConnectionRequest {
            id,
            service: service.clone(),
        })
        .to_capsule();
        self.outstanding.insert(id, service);
        Ok((id, capsule))
    }

    /// A `connect-accept` named `id`: the service it is for, and the request is done.
    /// `None` means 404 (the draft: "If request_id template variable is not matching an
    /// outstanding connection request for given client, proxy server MUST respond with an
    /// error and SHOULD use the 404 (Not Found) status code").
    pub fn accept(&mut self, id: RequestId) -> Option<Service> {
        self.outstanding.remove(&id)
    }

    /// Gives up on request `id` (the inbound flow went away or timed out); a later accept
    /// or decline for it is then unknown.
    pub fn cancel(&mut self, id: RequestId) -> Option<Service> {
        self.outstanding.remove(&id)
    }

    /// Handles one capsule from the origin. `Ok(None)`: nothing to do (unknown types are
    /// skipped). An error is the origin's: abort the channel (RFC 9297 §3.3).
    pub fn on_capsule(&mut self, capsule: &Capsule) -> Result<Option<GatewayEvent>, ChannelError> {
        if capsule.kind == CapsuleType::CONNECTION_REQUEST {
            return Err(ChannelError::WrongDirection(capsule.kind, Peer::Origin));
        }
        let parsed = ControlCapsule::parse(capsule, self.max_services)
            .map_err(|e| ChannelError::Malformed(e, Peer::Origin))?;
        match parsed {
            None => Ok(None),
            Some(ControlCapsule::AvailableServices(list)) => {
                // "AVAILABLE_SERVICES messages are not incremental. A new message completely
                // overwrites the previous hint."
                self.advertised = list.services;
                Ok(Some(GatewayEvent::ServicesAdvertised))
            }
            Some(ControlCapsule::ConnectionRequestDeclined(d)) => {
                // "if the Request ID does not correspond to an outstanding
                // CONNECTION_REQUEST on the same Listener Control Channel, the server MUST
                // follow the error-handling procedure defined in Section 3.3 of HTTP-DGRAM".
                let service = self
                    .outstanding
                    .remove(&d.id)
                    .ok_or(ChannelError::UnknownDecline(d.id))?;
                Ok(Some(GatewayEvent::Declined { id: d.id, service }))
            }
            Some(ControlCapsule::ConnectionRequest(_)) => Err(ChannelError::WrongDirection(
                CapsuleType::CONNECTION_REQUEST,
                Peer::Origin,
            )),
        }
    }
}

/// How many finished request IDs an [`OriginChannel`] remembers to catch duplicates.
pub const DEFAULT_ID_MEMORY: usize = 4096;

/// The origin's end of one `connect-listen` channel: which requests are pending.
#[derive(Debug, Clone)]
pub struct OriginChannel {
    pending: HashMap<RequestId, Service>,
    max_pending: usize,
    /// Finished IDs, oldest first, to catch a reused ID (bounded: older reuse goes unseen).
    done: VecDeque<RequestId>,
    done_set: HashSet<RequestId>,
    id_memory: usize,
}

/// What a capsule from the gateway asks of the origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginEvent {
    /// Accept (send `connect-accept` for `id`, then connect to the service) or decline
    /// ([`OriginChannel::decline`]). Whether the service is offered is the caller's call.
    Requested(ConnectionRequest),
    /// More requests pending than this origin allows: send the decline capsule at once.
    Overloaded(RequestId, Capsule),
}

impl OriginChannel {
    /// A channel that keeps at most `max_pending` requests pending (more are declined).
    pub fn new(max_pending: usize) -> Self {
        Self {
            pending: HashMap::new(),
            max_pending,
            done: VecDeque::new(),
            done_set: HashSet::new(),
            id_memory: DEFAULT_ID_MEMORY,
        }
    }

    /// The `AVAILABLE_SERVICES` capsule for `services`.
    pub fn advertise(services: &[Service]) -> Capsule {
        ControlCapsule::AvailableServices(AvailableServices {
            services: services.to_vec(),
        })
        .to_capsule()
    }

    /// How many requests are pending.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    fn finish(&mut self, id: RequestId) {
        if self.done_set.insert(id) {
            self.done.push_back(id);
        }
        while self.done.len() > self.id_memory {
            if let Some(old) = self.done.pop_front() {
                self.done_set.remove(&old);
            }
        }
    }

    /// Handles one capsule from the gateway. An error is the gateway's: abort the channel.
    pub fn on_capsule(&mut self, capsule: &Capsule) -> Result<Option<OriginEvent>, ChannelError> {
        if capsule.kind == CapsuleType::AVAILABLE_SERVICES
            || capsule.kind == CapsuleType::CONNECTION_REQUEST_DECLINED
        {
            return Err(ChannelError::WrongDirection(capsule.kind, Peer::Gateway));
        }
        let parsed = ControlCapsule::parse(capsule, 0)
            .map_err(|e| ChannelError::Malformed(e, Peer::Gateway))?;
        match parsed {
            None => Ok(None),
            Some(ControlCapsule::ConnectionRequest(request)) => {
                // "if the Request ID has been previously used on the same Listener Control
                // Channel, the client MUST follow the error-handling procedure defined in
                // Section 3.3 of HTTP-DGRAM".
                if self.pending.contains_key(&request.id) || self.done_set.contains(&request.id) {
                    return Err(ChannelError::DuplicateRequestId(request.id));
                }
                if self.pending.len() >= self.max_pending {
                    self.finish(request.id);
                    let decline =
                        ControlCapsule::ConnectionRequestDeclined(ConnectionRequestDeclined {
                            id: request.id,
                        })
                        .to_capsule();
                    return Ok(Some(OriginEvent::Overloaded(request.id, decline)));
                }
                self.pending.insert(request.id, request.service.clone());
                Ok(Some(OriginEvent::Requested(request)))
            }
            Some(other) => Err(ChannelError::WrongDirection(other.kind(), Peer::Gateway)),
        }
    }

    /// Declines pending request `id`: the capsule to send.
    pub fn decline(&mut self, id: RequestId) -> Result<Capsule, ChannelError> {
        self.pending
            .remove(&id)
            .ok_or(ChannelError::NotPending(id))?;
        self.finish(id);
        Ok(
            ControlCapsule::ConnectionRequestDeclined(ConnectionRequestDeclined { id })
                .to_capsule(),
        )
    }

    /// Marks pending request `id` as being accepted (the `connect-accept` request is on
    /// its way): the service to connect to once the gateway answers.
    pub fn accepting(&mut self, id: RequestId) -> Result<Service, ChannelError> {
        let service = self
            .pending
            .remove(&id)
            .ok_or(ChannelError::NotPending(id))?;
        self.finish(id);
        Ok(service)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn port(p: u16) -> ServicePort {
        ServicePort::new(p).unwrap()
    }

    #[test]
    fn the_digests_worked_example_request_1_for_local_tcp_22() {
        // Digest §9: "Request ID 1 asks for local TCP port 22. The capsule value is
        // 01 | 00 | 06 | 00 16".
        let value = [0x01, 0x00, 0x06, 0x00, 0x16];
        let capsule = Capsule::new(CapsuleType::CONNECTION_REQUEST, value.to_vec());
        let parsed = ControlCapsule::parse(&capsule, 0).unwrap().unwrap();
        let expected = ControlCapsule::ConnectionRequest(ConnectionRequest {
            id: RequestId::new(1).unwrap(),
            service: Service::local(IpProtocol::Tcp, port(22)),
        });
        assert_eq!(parsed, expected);
        assert_eq!(&expected.to_capsule().value[..], &value[..]);
    }

    #[test]
    fn the_digests_hostname_example() {
        // Digest §9: "db.internal:5432/tcp is encoded as 01 | 0b "db.internal" | 06 | 15 38".
        let mut wire = vec![0x01, 0x0b];
        wire.extend_from_slice(b"db.internal");
        wire.extend_from_slice(&[0x06, 0x15, 0x38]);
        let service = Service::decode(&mut &wire[..]).unwrap();
        assert_eq!(
            service,
            Service {
                destination: Destination::Hostname(Hostname::new("db.internal").unwrap()),
                protocol: IpProtocol::Tcp,
                port: port(5432),
            }
        );
        assert_eq!(service.to_string(), "db.internal:5432/tcp");
        let mut out = BytesMut::new();
        service.encode(&mut out);
        assert_eq!(&out[..], &wire[..]);
    }

    #[test]
    fn malformed_services_say_what_is_wrong() {
        let cases: &[(&[u8], MalformedCapsule)] = &[
            (
                &[0x01, 0x00, 0x06, 0x00],
                MalformedCapsule::Truncated("Port"),
            ),
            (
                &[0x01, 0x02, 0x06, 0x00, 0x16],
                MalformedCapsule::DestinationType(2),
            ),
            (
                &[0x01, 0x00, 0x01, 0x00, 0x16],
                MalformedCapsule::Protocol(1),
            ),
            (&[0x01, 0x00, 0x06, 0x00, 0x00], MalformedCapsule::PortZero),
            (
                &[0x01, 0x00, 0x06, 0x00, 0x16, 0x00],
                MalformedCapsule::TrailingBytes(1),
            ),
            (
                &[0x01, 0x01, 0x03, b'a', b' ', b'b', 0x06, 0x00, 0x16],
                MalformedCapsule::BadHostname,
            ),
            (
                &[0x01, 0x01, 0x44, 0x00],
                MalformedCapsule::HostnameTooLong(0x400),
            ),
            (
                &[0x01, 0x04, 10, 0, 0],
                MalformedCapsule::Truncated("IPv4 address"),
            ),
            (&[0x40], MalformedCapsule::Truncated("Request ID")),
        ];
        for (value, why) in cases {
            let capsule = Capsule::new(CapsuleType::CONNECTION_REQUEST, value.to_vec());
            let err = ControlCapsule::parse(&capsule, 0).unwrap_err();
            assert_eq!(&err.why, why, "{value:02x?}");
        }
    }

    #[test]
    fn available_services_are_bounded_in_count() {
        let services: Vec<Service> = (1..=5)
            .map(|p| Service::local(IpProtocol::Udp, port(p)))
            .collect();
        let capsule = OriginChannel::advertise(&services);
        assert!(ControlCapsule::parse(&capsule, 5).is_ok());
        assert_eq!(
            ControlCapsule::parse(&capsule, 4).unwrap_err().why,
            MalformedCapsule::TooManyServices(4)
        );
        // An empty list is a valid (empty) hint.
        let empty = Capsule::new(CapsuleType::AVAILABLE_SERVICES, Bytes::new());
        assert_eq!(
            ControlCapsule::parse(&empty, 4).unwrap(),
            Some(ControlCapsule::AvailableServices(
                AvailableServices::default()
            ))
        );
    }

    #[test]
    fn unknown_capsule_types_are_skipped() {
        let grease = Capsule::new(CapsuleType::new(0x17 + 0x29).unwrap(), &b"junk"[..]);
        assert_eq!(ControlCapsule::parse(&grease, 1).unwrap(), None);
        let mut gateway = GatewayChannel::new([7; 16], 4);
        assert_eq!(gateway.on_capsule(&grease).unwrap(), None);
        let mut origin = OriginChannel::new(4);
        assert_eq!(origin.on_capsule(&grease).unwrap(), None);
    }

    #[test]
    fn request_ids_are_unique_and_not_a_plain_counter() {
        let mut seq = RequestIdSequence::new([0x5a; 16]);
        let ids: Vec<u64> = (0..10_000).map(|_| seq.next_id().unwrap().get()).collect();
        let unique: HashSet<u64> = ids.iter().copied().collect();
        assert_eq!(unique.len(), ids.len());
        assert!(ids.iter().all(|&i| i <= VARINT_MAX));
        assert!(ids.windows(2).filter(|w| w[1] == w[0] + 1).count() < 10);
        // Another key, another sequence.
        let mut other = RequestIdSequence::new([0xa5; 16]);
        assert_ne!(other.next_id().unwrap().get(), ids[0]);
    }

    #[test]
    fn a_whole_exchange_request_decline_accept() {
        let mut gateway = GatewayChannel::new([1; 16], 2);
        let mut origin = OriginChannel::new(8);
        let ssh = Service::local(IpProtocol::Tcp, port(22));
        let dns = Service::local(IpProtocol::Udp, port(53));

        assert_eq!(
            gateway
                .on_capsule(&OriginChannel::advertise(&[ssh.clone(), dns.clone()]))
                .unwrap(),
            Some(GatewayEvent::ServicesAdvertised)
        );
        assert_eq!(gateway.advertised(), &[ssh.clone(), dns.clone()]);

        let (id1, c1) = gateway.request(ssh.clone()).unwrap();
        let (id2, c2) = gateway.request(dns.clone()).unwrap();
        // The third is refused locally: two outstanding is the bound.
        assert_eq!(
            gateway.request(ssh.clone()),
            Err(ChannelError::TooManyOutstanding(2))
        );

        let Some(OriginEvent::Requested(r1)) = origin.on_capsule(&c1).unwrap() else {
            panic!("not a request");
        };
        assert_eq!((r1.id, &r1.service), (id1, &ssh));
        assert!(matches!(
            origin.on_capsule(&c2).unwrap(),
            Some(OriginEvent::Requested(_))
        ));

        // The origin declines the UDP one and accepts the TCP one.
        let decline = origin.decline(id2).unwrap();
        assert_eq!(
            gateway.on_capsule(&decline).unwrap(),
            Some(GatewayEvent::Declined {
                id: id2,
                service: dns
            })
        );
        assert_eq!(origin.accepting(id1).unwrap(), ssh);
        assert_eq!(gateway.accept(id1), Some(ssh));
        // Both done: a second accept is a 404, a second decline a capsule error.
        assert_eq!(gateway.accept(id1), None);
        let err = gateway.on_capsule(&decline).unwrap_err();
        assert_eq!(err, ChannelError::UnknownDecline(id2));
        assert!(err.is_peer_error());
        assert_eq!(gateway.outstanding(), 0);
    }

    #[test]
    fn a_duplicate_request_id_is_the_gateways_capsule_error() {
        let mut origin = OriginChannel::new(8);
        let request = ControlCapsule::ConnectionRequest(ConnectionRequest {
            id: RequestId::new(9).unwrap(),
            service: Service::local(IpProtocol::Tcp, port(22)),
        })
        .to_capsule();
        assert!(origin.on_capsule(&request).is_ok());
        // While pending...
        let err = origin.on_capsule(&request).unwrap_err();
        assert_eq!(
            err.to_string(),
            "gateway reused request ID 9 on this channel"
        );
        assert!(err.is_peer_error());
        // ...and after it is done.
        origin.accepting(RequestId::new(9).unwrap()).unwrap();
        assert!(origin.on_capsule(&request).is_err());
    }

    #[test]
    fn an_overloaded_origin_declines_at_once() {
        let mut origin = OriginChannel::new(1);
        let mut gateway = GatewayChannel::new([3; 16], 8);
        let svc = Service::local(IpProtocol::Tcp, port(22));
        let (_, c1) = gateway.request(svc.clone()).unwrap();
        let (id2, c2) = gateway.request(svc.clone()).unwrap();
        assert!(matches!(
            origin.on_capsule(&c1).unwrap(),
            Some(OriginEvent::Requested(_))
        ));
        let Some(OriginEvent::Overloaded(id, decline)) = origin.on_capsule(&c2).unwrap() else {
            panic!("not declined");
        };
        assert_eq!(id, id2);
        assert_eq!(
            gateway.on_capsule(&decline).unwrap(),
            Some(GatewayEvent::Declined {
                id: id2,
                service: svc
            })
        );
        assert_eq!(origin.pending(), 1);
    }

    #[test]
    fn capsules_in_the_wrong_direction_are_peer_errors() {
        let mut gateway = GatewayChannel::new([0; 16], 1);
        let request = ControlCapsule::ConnectionRequest(ConnectionRequest {
            id: RequestId::new(1).unwrap(),
            service: Service::local(IpProtocol::Tcp, port(22)),
        })
        .to_capsule();
        let err = gateway.on_capsule(&request).unwrap_err();
        assert_eq!(
            err.to_string(),
            "origin sent CONNECTION_REQUEST (0x3b7a0c41), which only the gateway sends"
        );
        let mut origin = OriginChannel::new(1);
        let err = origin
            .on_capsule(&OriginChannel::advertise(&[Service::local(
                IpProtocol::Tcp,
                port(22),
            )]))
            .unwrap_err();
        assert_eq!(
            err,
            ChannelError::WrongDirection(CapsuleType::AVAILABLE_SERVICES, Peer::Gateway)
        );
        let malformed = Capsule::new(CapsuleType::CONNECTION_REQUEST_DECLINED, Bytes::new());
        assert_eq!(
            gateway.on_capsule(&malformed).unwrap_err().to_string(),
            "origin sent a malformed CONNECTION_REQUEST_DECLINED (0x3b7a0c42): the value ends inside its Request ID field"
        );
    }

    #[test]
    fn local_refusals_are_not_peer_errors() {
        let mut origin = OriginChannel::new(1);
        let err = origin.decline(RequestId::new(5).unwrap()).unwrap_err();
        assert!(!err.is_peer_error());
        assert!(!ChannelError::TooManyOutstanding(1).is_peer_error());
    }

    fn arb_service() -> impl Strategy<Value = Service> {
        let dest = prop_oneof![
            Just(Destination::Local),
            "[a-z0-9]{1,20}(\\.[a-z0-9_-]{0,10}[a-z0-9]){0,3}"
                .prop_filter_map("hostname", |h| Hostname::new(&h).map(Destination::Hostname)),
            any::<[u8; 4]>().prop_map(|o| Destination::Ipv4(Ipv4Addr::from(o))),
            any::<[u8; 16]>().prop_map(|o| Destination::Ipv6(Ipv6Addr::from(o))),
        ];
        (
            dest,
            prop_oneof![Just(IpProtocol::Tcp), Just(IpProtocol::Udp)],
            1u16..,
        )
            .prop_map(|(destination, protocol, p)| Service {
                destination,
                protocol,
                port: port(p),
            })
    }

    fn arb_control() -> impl Strategy<Value = ControlCapsule> {
        prop_oneof![
            proptest::collection::vec(arb_service(), 0..8).prop_map(|services| {
                ControlCapsule::AvailableServices(AvailableServices { services })
            }),
            (0..=VARINT_MAX, arb_service()).prop_map(|(id, service)| {
                ControlCapsule::ConnectionRequest(ConnectionRequest {
                    id: RequestId(id),
                    service,
                })
            }),
            (0..=VARINT_MAX).prop_map(|id| {
                ControlCapsule::ConnectionRequestDeclined(ConnectionRequestDeclined {
                    id: RequestId(id),
                })
            }),
        ]
    }

    proptest! {
        #[test]
        fn control_capsules_round_trip(c in arb_control()) {
            let capsule = c.to_capsule();
            prop_assert_eq!(ControlCapsule::parse(&capsule, 8).unwrap(), Some(c));
        }

        #[test]
        fn arbitrary_values_never_panic(kind in 0u8..3, value in proptest::collection::vec(any::<u8>(), 0..64)) {
            let kind = [
                CapsuleType::AVAILABLE_SERVICES,
                CapsuleType::CONNECTION_REQUEST,
                CapsuleType::CONNECTION_REQUEST_DECLINED,
            ][usize::from(kind)];
            let capsule = Capsule::new(kind, value);
            if let Ok(Some(parsed)) = ControlCapsule::parse(&capsule, 64) {
                // What parses re-encodes to the same bytes (the encoding is canonical
                // except for non-shortest varints and hostname case).
                let again = ControlCapsule::parse(&parsed.to_capsule(), 64).unwrap();
                prop_assert_eq!(again, Some(parsed));
            }
        }

        #[test]
        fn the_id_permutation_is_injective(a in 0..=VARINT_MAX, b in 0..=VARINT_MAX, key in any::<[u64; 2]>()) {
            prop_assume!(a != b);
            prop_assert_ne!(permute(a, key), permute(b, key));
        }
    }
}
