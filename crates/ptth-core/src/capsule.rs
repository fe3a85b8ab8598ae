//! RFC 9297 capsules: an incremental, bounded decoder and an encoder, the capsule types
//! ptth knows, and the RFC 9298 UDP proxying payload carried in HTTP datagrams.
//!
//! RFC 9297 §3.2:
//!
//! ```text
//! Capsule {
//!   Capsule Type (i),
//!   Capsule Length (i),
//!   Capsule Value (..),
//! }
//! ```
//!
//! The decoder ([`CapsuleDecoder`]) holds no buffer of its own: it reads from the
//! caller's [`BytesMut`] and consumes only what it has decoded (a `DATA` or `FINAL_DATA`
//! header as soon as it is whole; any other capsule when it returns it). Every capsule it
//! hands back whole is at most the caller's `max_len` bytes, checked from the header
//! alone, so a peer cannot make the caller buffer more than that plus one header. `DATA`
//! and `FINAL_DATA` (draft-ietf-httpbis-connect-tcp) are the exception: their payload is
//! returned in chunks as it arrives, whatever the capsule's length, because the draft says
//! "Recipients SHOULD begin forwarding payload from a DATA or FINAL_DATA capsule without
//! waiting to receive the entire capsule".
//!
//! [`CapsuleDecoder::decode_from`] decodes the same stream from received chunks the caller
//! owns as [`Bytes`] (HTTP/2 DATA frames): a payload is a slice of its chunk, and only what
//! straddles two chunks (a cut header, a short capsule not yet whole) is gathered in a small
//! buffer of the caller's.
//!
//! Unknown capsule types come back as ordinary [`Capsule`]s; RFC 9297 §3.2 "Endpoints
//! that receive a Capsule with an unknown Capsule Type MUST silently drop that Capsule and
//! skip over it to parse the next Capsule", which the typed layers above do by returning
//! `None` for a type they do not know.

use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::stream_id::{decode_varint, encode_varint, varint_len, VARINT_MAX};

/// A capsule type code point (a QUIC varint, at most 2^62 − 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CapsuleType(u64);

impl CapsuleType {
    /// RFC 9297 §3.5: `DATAGRAM` (0x00), an HTTP datagram carried as a capsule.
    pub const DATAGRAM: Self = Self(0x00);
    /// draft-ietf-httpbis-connect-tcp (IANA Considerations, "Interop testing"): "the
    /// Capsule Type values `0x2028d7f2` and `0x2028d7f3` shall be used provisionally for
    /// testing, under the names "DATA-12" and "FINAL_DATA-12"". TCP payload.
    pub const DATA: Self = Self(0x2028_d7f2);
    /// `FINAL_DATA-12` (see [`CapsuleType::DATA`]): TCP payload and then the sender's FIN.
    pub const FINAL_DATA: Self = Self(0x2028_d7f3);
    /// `AVAILABLE_SERVICES` (draft-rosomakho-masque-reverse-connect), a **private**
    /// experimental code point: see [`CapsuleType::CONNECTION_REQUEST`].
    pub const AVAILABLE_SERVICES: Self = Self(0x3b7a_0c40);
    /// `CONNECTION_REQUEST`, a **private** experimental code point.
    ///
    /// draft-rosomakho-masque-reverse-connect-01 §IANA: the three capsule types are
    /// "(TBD)" and IANA "is requested to add" them to the HTTP Capsule Types registry.
    /// Until it does, ptth uses three adjacent values from the registry's First Come
    /// First Served range (RFC 9297 §5.4: 0x40 and above) that nothing registers:
    /// `0x3b7a0c40`, `0x3b7a0c41`, `0x3b7a0c42`. They are 4-byte varints, and none has the
    /// reserved greasing form `0x29 * N + 0x17` (RFC 9297 §5.4), which receivers must skip
    /// and so could never carry meaning. Both ends must be ptth (or agree on these
    /// values); `docs/protocol.md` lists them.
    pub const CONNECTION_REQUEST: Self = Self(0x3b7a_0c41);
    /// `CONNECTION_REQUEST_DECLINED`, a **private** experimental code point: see
    /// [`CapsuleType::CONNECTION_REQUEST`].
    pub const CONNECTION_REQUEST_DECLINED: Self = Self(0x3b7a_0c42);

    /// A type from its code point; `None` above 2^62 − 1.
    pub fn new(value: u64) -> Option<Self> {
        (value <= VARINT_MAX).then_some(Self(value))
    }

    /// The code point.
    pub fn value(self) -> u64 {
        self.0
    }

    /// Whether this is a reserved greasing type (RFC 9297 §5.4: "0x29 * N + 0x17").
    pub fn is_grease(self) -> bool {
        self.0 >= 0x17 && (self.0 - 0x17) % 0x29 == 0
    }

    /// The registry name ptth knows this type by, if any.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::DATAGRAM => "DATAGRAM",
            Self::DATA => "DATA",
            Self::FINAL_DATA => "FINAL_DATA",
            Self::AVAILABLE_SERVICES => "AVAILABLE_SERVICES",
            Self::CONNECTION_REQUEST => "CONNECTION_REQUEST",
            Self::CONNECTION_REQUEST_DECLINED => "CONNECTION_REQUEST_DECLINED",
            _ => return None,
        })
    }

    fn is_streamed(self) -> bool {
        self == Self::DATA || self == Self::FINAL_DATA
    }
}

impl fmt::Display for CapsuleType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name} (0x{:x})", self.0),
            None => write!(f, "capsule type 0x{:x}", self.0),
        }
    }
}

/// One whole capsule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capsule {
    /// Its type.
    pub kind: CapsuleType,
    /// Its value (the `Capsule Value` field).
    pub value: Bytes,
}

impl Capsule {
    /// A capsule of `kind` carrying `value`.
    pub fn new(kind: CapsuleType, value: impl Into<Bytes>) -> Self {
        Self {
            kind,
            value: value.into(),
        }
    }

    /// Appends the encoded capsule to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        encode_header(self.kind, self.value.len() as u64, out);
        out.put_slice(&self.value);
    }

    /// The encoded capsule.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.encoded_len());
        self.encode(&mut out);
        out.freeze()
    }

    /// How many bytes [`Capsule::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        header_len(self.kind, self.value.len() as u64) + self.value.len()
    }
}

fn header_len(kind: CapsuleType, len: u64) -> usize {
    // A CapsuleType is at most VARINT_MAX by construction, and no buffer is 2^62 bytes.
    varint_len(kind.0).unwrap_or(8) + varint_len(len).unwrap_or(8)
}

/// Appends a capsule header (type and length) to `out`; the caller appends `len` bytes of
/// value. This is how a sender frames TCP payload without copying it.
pub fn encode_header(kind: CapsuleType, len: u64, out: &mut BytesMut) {
    out.reserve(header_len(kind, len));
    // Both are at most VARINT_MAX: the type by construction, the length because no
    // buffer reaches 2^62 bytes. Clamp rather than panic all the same.
    let _ = encode_varint(kind.0, out);
    let _ = encode_varint(len.min(VARINT_MAX), out);
}

/// What the decoder produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A whole capsule of any type but `DATA` and `FINAL_DATA` (unknown types included).
    Capsule(Capsule),
    /// Part of the payload of a `DATA` or `FINAL_DATA` capsule. `fin` is set on the last
    /// chunk of a `FINAL_DATA` capsule (a zero-length `FINAL_DATA` gives one empty chunk
    /// with `fin`): the peer has closed its direction, like a TCP FIN.
    Data {
        /// The payload bytes, in order.
        payload: Bytes,
        /// The end of a `FINAL_DATA` capsule.
        fin: bool,
    },
}

/// Why capsule decoding failed. RFC 9297 §3.3: a receiver that "encounters an error
/// processing the Capsule Protocol" treats it "as if it had received a malformed or
/// incomplete HTTP message"; every variant is the peer's doing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CapsuleError {
    /// A capsule longer than the receiver allows.
    #[error("peer sent {kind} of {len} bytes; this receiver takes at most {max}")]
    TooLong {
        /// Its type.
        kind: CapsuleType,
        /// Its declared length.
        len: u64,
        /// The receiver's bound.
        max: usize,
    },
    /// The stream ended inside a capsule.
    #[error("peer's capsule stream ended inside a capsule ({0} bytes of it received)")]
    Truncated(usize),
    /// `DATA` or `FINAL_DATA` after a `FINAL_DATA`.
    #[error("peer sent {0} after FINAL_DATA")]
    DataAfterFin(CapsuleType),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between capsules.
    Header,
    /// Inside a `DATA` (`fin` false) or `FINAL_DATA` (`fin` true) capsule.
    Streaming { remaining: u64, fin: bool },
}

/// What a whole header starts ([`CapsuleDecoder::start`]).
enum Start {
    /// A `DATA`/`FINAL_DATA` payload, or the item an empty one is.
    Streamed(Option<Decoded>),
    /// Another capsule, of this type and value length (within the bound).
    Whole(CapsuleType, usize),
}

/// How many more bytes the item begun in `held` (non-empty, not yet decodable) needs
/// before the decoder can say more: the rest of its header (learning each varint's
/// length from its first byte, RFC 9000 §16), then the rest of a whole capsule's value.
fn missing(held: &[u8]) -> usize {
    let Some(&first) = held.first() else {
        return 1;
    };
    let type_len = 1usize << (first >> 6);
    let Some(&second) = held.get(type_len) else {
        // The type varint's rest, and the length varint's first byte.
        return type_len + 1 - held.len();
    };
    let header = type_len + (1usize << (second >> 6));
    if held.len() < header {
        return header - held.len();
    }
    // A whole header the decoder held on to: a capsule whose value (checked against the
    // bound by the decoder already) is not all there.
    let mut peek = &held[type_len..];
    let value = decode_varint(&mut peek)
        .ok()
        .and_then(|l| usize::try_from(l).ok())
        .unwrap_or(0);
    header
        .saturating_add(value)
        .saturating_sub(held.len())
        .max(1)
}

/// Incremental capsule decoder over a caller-owned buffer (see the module docs).
#[derive(Debug, Clone)]
pub struct CapsuleDecoder {
    max_len: usize,
    state: State,
    fin_seen: bool,
}

impl CapsuleDecoder {
    /// A decoder that refuses any capsule other than `DATA`/`FINAL_DATA` longer than
    /// `max_len` bytes of value.
    pub fn new(max_len: usize) -> Self {
        Self {
            max_len,
            state: State::Header,
            fin_seen: false,
        }
    }

    /// The bound on whole capsules.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Whether a `FINAL_DATA` capsule has been fully received.
    pub fn fin_received(&self) -> bool {
        self.fin_seen
    }

    /// Decodes the next item from the front of `buf`, consuming what it decodes (whole
    /// capsules as it returns them; `DATA`/`FINAL_DATA` headers as soon as they are whole,
    /// their payload as it returns it).
    /// `Ok(None)`: more bytes are needed (the buffer then holds less than one header plus
    /// `max_len` bytes of a capsule, or nothing of a streamed payload).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, CapsuleError> {
        loop {
            match self.state {
                State::Streaming { remaining, fin } => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let (take, fin) = self.stream(remaining, fin, buf.len());
                    let payload = buf.split_to(take).freeze();
                    return Ok(Some(Decoded::Data { payload, fin }));
                }
                State::Header => {
                    let mut peek = &buf[..];
                    // decode_varint fails only with UnexpectedEnd: more bytes are needed.
                    let (Ok(kind), Ok(len)) = (decode_varint(&mut peek), decode_varint(&mut peek))
                    else {
                        return Ok(None);
                    };
                    let header = buf.len() - peek.len();
                    let (kind, value_len) = match self.start(CapsuleType(kind), len)? {
                        Start::Streamed(item) => {
                            buf.advance(header);
                            if item.is_some() {
                                return Ok(item);
                            }
                            continue;
                        }
                        Start::Whole(kind, value_len) => (kind, value_len),
                    };
                    if buf.len() - header < value_len {
                        // Let the caller's next read fill the whole capsule at once.
                        buf.reserve(header + value_len - buf.len());
                        return Ok(None);
                    }
                    buf.advance(header);
                    let value = buf.split_to(value_len).freeze();
                    return Ok(Some(Decoded::Capsule(Capsule { kind, value })));
                }
            }
        }
    }

    /// Decodes the next item from received chunks that the caller does not copy: `input`
    /// is one chunk (an HTTP/2 DATA frame's `Bytes`, say), consumed from the front as it is
    /// decoded, and `held` keeps what straddles two chunks.
    ///
    /// A `DATA`/`FINAL_DATA` payload comes back as a slice of `input` (no copy), split where
    /// the chunks split it. Only a capsule header cut by a chunk's end (at most 16 bytes),
    /// or another capsule not yet whole (at most its header and `max_len` bytes), is
    /// gathered in `held`, and only with the bytes it still lacks, so what follows it in
    /// `input` stays in `input`. `Ok(None)`: `input` is used up; call again with the next
    /// chunk, and at the stream's end call [`CapsuleDecoder::finish`] with `held`.
    ///
    /// Fed the same bytes, it returns the same capsules and the same payload bytes as
    /// [`CapsuleDecoder::decode`], however the stream is cut into chunks.
    pub fn decode_from(
        &mut self,
        held: &mut BytesMut,
        input: &mut Bytes,
    ) -> Result<Option<Decoded>, CapsuleError> {
        loop {
            if !held.is_empty() {
                if let Some(item) = self.decode(held)? {
                    return Ok(Some(item));
                }
                if held.is_empty() {
                    // A DATA header was completed and consumed: its payload comes from input.
                    continue;
                }
                if input.is_empty() {
                    return Ok(None);
                }
                // What the held item still lacks, and not a byte more.
                let want = missing(held).min(input.len());
                held.extend_from_slice(&input.split_to(want));
                continue;
            }
            match self.state {
                State::Streaming { remaining, fin } => {
                    if input.is_empty() {
                        return Ok(None);
                    }
                    let (take, fin) = self.stream(remaining, fin, input.len());
                    let payload = input.split_to(take);
                    return Ok(Some(Decoded::Data { payload, fin }));
                }
                State::Header => {
                    let mut peek = &input[..];
                    let (Ok(kind), Ok(len)) = (decode_varint(&mut peek), decode_varint(&mut peek))
                    else {
                        // Nothing, or a header cut by the chunk's end (at most 15 bytes).
                        held.extend_from_slice(input);
                        input.clear();
                        return Ok(None);
                    };
                    let header = input.len() - peek.len();
                    match self.start(CapsuleType(kind), len)? {
                        Start::Streamed(item) => {
                            input.advance(header);
                            if item.is_some() {
                                return Ok(item);
                            }
                        }
                        Start::Whole(kind, value_len) => {
                            if input.len() - header < value_len {
                                // Not whole yet: held, at most its header and `max_len`.
                                held.extend_from_slice(input);
                                input.clear();
                                return Ok(None);
                            }
                            input.advance(header);
                            let value = input.split_to(value_len);
                            return Ok(Some(Decoded::Capsule(Capsule { kind, value })));
                        }
                    }
                }
            }
        }
    }

    /// Takes up to `available` bytes of the streamed payload that has `remaining` bytes
    /// left: how many, and whether they end a `FINAL_DATA` (`fin`).
    fn stream(&mut self, remaining: u64, fin: bool, available: usize) -> (usize, bool) {
        let take = usize::try_from(remaining)
            .unwrap_or(usize::MAX)
            .min(available);
        let left = remaining - take as u64;
        if left > 0 {
            self.state = State::Streaming {
                remaining: left,
                fin,
            };
            return (take, false);
        }
        self.state = State::Header;
        if fin {
            self.fin_seen = true;
        }
        (take, fin)
    }

    /// What a whole capsule header of `kind` and `len` starts: a streamed payload (the
    /// state is set; `Some` for the empty `FINAL_DATA` that is its own item), or a capsule
    /// to return whole once its `len` bytes of value are there.
    fn start(&mut self, kind: CapsuleType, len: u64) -> Result<Start, CapsuleError> {
        if kind.is_streamed() {
            if self.fin_seen {
                return Err(CapsuleError::DataAfterFin(kind));
            }
            let fin = kind == CapsuleType::FINAL_DATA;
            if len == 0 {
                if fin {
                    self.fin_seen = true;
                    return Ok(Start::Streamed(Some(Decoded::Data {
                        payload: Bytes::new(),
                        fin: true,
                    })));
                }
                // An empty DATA capsule carries nothing ("MAY be zero").
                return Ok(Start::Streamed(None));
            }
            self.state = State::Streaming {
                remaining: len,
                fin,
            };
            return Ok(Start::Streamed(None));
        }
        match usize::try_from(len).ok().filter(|&l| l <= self.max_len) {
            Some(value_len) => Ok(Start::Whole(kind, value_len)),
            None => Err(CapsuleError::TooLong {
                kind,
                len,
                max: self.max_len,
            }),
        }
    }

    /// Call at the end of the stream with what is left in the buffer: an error if the
    /// stream ended inside a capsule (RFC 9297 §3.3 treats that as malformed).
    pub fn finish(&self, rest: &[u8]) -> Result<(), CapsuleError> {
        match self.state {
            State::Streaming { .. } => Err(CapsuleError::Truncated(rest.len())),
            State::Header if !rest.is_empty() => Err(CapsuleError::Truncated(rest.len())),
            State::Header => Ok(()),
        }
    }
}

/// The largest `DATAGRAM` capsule value a UDP flow takes: a Context ID (a varint, at most
/// 8 bytes) and a UDP payload of at most 65 535 bytes (the UDP length field is 16 bits).
/// A longer one can carry no UDP datagram, so it is the sender's capsule error (RFC 9297
/// §3.3), refused from its header by a [`CapsuleDecoder`] bounded at this.
pub const MAX_DATAGRAM_CAPSULE: usize = 65_535 + 8;

/// Why an RFC 9298 UDP proxying payload is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DatagramError {
    /// The HTTP datagram payload does not start with a whole Context ID varint.
    #[error("peer's HTTP datagram ends inside its Context ID")]
    MissingContextId,
}

/// An RFC 9298 §5 UDP proxying payload, the HTTP datagram payload of a CONNECT-UDP (or
/// reverse-connect UDP) stream:
///
/// ```text
/// UDP Proxying HTTP Datagram Payload {
///   Context ID (i),
///   UDP Proxying Payload (..),
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpProxyingPayload {
    /// The Context ID; 0 carries a UDP payload.
    pub context_id: u64,
    /// The rest of the datagram.
    pub payload: Bytes,
}

impl UdpProxyingPayload {
    /// A UDP payload under Context ID 0.
    pub fn udp(payload: impl Into<Bytes>) -> Self {
        Self {
            context_id: 0,
            payload: payload.into(),
        }
    }

    /// Parses an HTTP datagram payload (a QUIC DATAGRAM after the quarter stream ID, or
    /// the value of a `DATAGRAM` capsule).
    pub fn parse(mut datagram: Bytes) -> Result<Self, DatagramError> {
        let context_id =
            decode_varint(&mut datagram).map_err(|_| DatagramError::MissingContextId)?;
        Ok(Self {
            context_id,
            payload: datagram,
        })
    }

    /// The UDP payload if this is Context ID 0. RFC 9298 §5: "When the Context ID field
    /// is set to zero, the UDP Proxying Payload field contains the unmodified payload of a
    /// UDP packet"; a datagram with a Context ID the endpoint has not registered is
    /// dropped (`None`).
    pub fn into_udp(self) -> Option<Bytes> {
        (self.context_id == 0).then_some(self.payload)
    }

    /// Appends the HTTP datagram payload (Context ID, then payload) to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        out.reserve(varint_len(self.context_id).unwrap_or(8) + self.payload.len());
        let _ = encode_varint(self.context_id.min(VARINT_MAX), out);
        out.put_slice(&self.payload);
    }

    /// The payload as a `DATAGRAM` capsule (RFC 9297 §3.5), for HTTP/1.1 and HTTP/2 or
    /// when QUIC datagrams are unavailable.
    pub fn to_capsule(&self) -> Capsule {
        let mut value = BytesMut::new();
        self.encode(&mut value);
        Capsule::new(CapsuleType::DATAGRAM, value.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(decoder: &mut CapsuleDecoder, buf: &mut BytesMut) -> Vec<Decoded> {
        let mut out = Vec::new();
        while let Some(item) = decoder.decode(buf).unwrap() {
            out.push(item);
        }
        out
    }

    #[test]
    fn private_code_points_are_not_grease_and_not_taken() {
        for t in [
            CapsuleType::AVAILABLE_SERVICES,
            CapsuleType::CONNECTION_REQUEST,
            CapsuleType::CONNECTION_REQUEST_DECLINED,
            CapsuleType::DATA,
            CapsuleType::FINAL_DATA,
        ] {
            assert!(!t.is_grease(), "{t}");
            assert_eq!(varint_len(t.value()), Some(4), "{t}");
        }
        assert!(CapsuleType(0x17).is_grease());
        assert!(CapsuleType(0x17 + 0x29 * 1000).is_grease());
        assert!(!CapsuleType::DATAGRAM.is_grease());
    }

    #[test]
    fn a_datagram_capsule_decodes_whole() {
        // Type 0x00, length 3, value "abc".
        let mut buf = BytesMut::from(&[0x00, 0x03, b'a', b'b', b'c', 0x00][..]);
        let mut d = CapsuleDecoder::new(16);
        assert_eq!(
            d.decode(&mut buf).unwrap(),
            Some(Decoded::Capsule(Capsule::new(
                CapsuleType::DATAGRAM,
                &b"abc"[..]
            )))
        );
        // One byte of the next header: more is needed, nothing consumed.
        assert_eq!(d.decode(&mut buf).unwrap(), None);
        assert_eq!(buf.len(), 1);
        assert!(d.finish(&buf).is_err());
    }

    #[test]
    fn a_partial_capsule_waits_and_consumes_nothing() {
        let whole = Capsule::new(CapsuleType(0x1234), vec![7u8; 10]).to_bytes();
        let mut d = CapsuleDecoder::new(10);
        for cut in 0..whole.len() {
            let mut buf = BytesMut::from(&whole[..cut]);
            assert_eq!(d.decode(&mut buf).unwrap(), None, "cut at {cut}");
            assert_eq!(buf.len(), cut);
        }
        let mut buf = BytesMut::from(&whole[..]);
        let Some(Decoded::Capsule(c)) = d.decode(&mut buf).unwrap() else {
            panic!("no capsule");
        };
        assert_eq!(c.kind.value(), 0x1234);
        assert!(buf.is_empty());
        assert!(d.finish(&buf).is_ok());
    }

    #[test]
    fn a_capsule_over_the_bound_is_refused_from_its_header() {
        // Only the header has arrived; the declared length alone is enough to refuse.
        let mut buf = BytesMut::new();
        encode_header(CapsuleType::AVAILABLE_SERVICES, 1 << 40, &mut buf);
        let err = CapsuleDecoder::new(4096).decode(&mut buf).unwrap_err();
        assert_eq!(
            err,
            CapsuleError::TooLong {
                kind: CapsuleType::AVAILABLE_SERVICES,
                len: 1 << 40,
                max: 4096
            }
        );
        assert!(err.to_string().starts_with("peer sent AVAILABLE_SERVICES"));
        // Exactly at the bound is fine.
        let mut buf = BytesMut::from(&Capsule::new(CapsuleType(0x50), vec![0; 8]).to_bytes()[..]);
        assert!(CapsuleDecoder::new(8).decode(&mut buf).unwrap().is_some());
    }

    #[test]
    fn data_streams_in_chunks_whatever_its_length() {
        // A 1 MiB DATA capsule through a decoder bounded at 16 bytes, fed 1000 bytes at
        // a time: every chunk comes out as it arrives.
        let mut wire = BytesMut::new();
        encode_header(CapsuleType::DATA, 1 << 20, &mut wire);
        wire.put_slice(&vec![0xab; 1 << 20]);
        Capsule::new(CapsuleType::FINAL_DATA, &b"end"[..]).encode(&mut wire);
        let mut d = CapsuleDecoder::new(16);
        let mut buf = BytesMut::new();
        let mut received = 0;
        let mut fin = false;
        for chunk in wire.chunks(1000) {
            buf.put_slice(chunk);
            for item in decode_all(&mut d, &mut buf) {
                let Decoded::Data { payload, fin: f } = item else {
                    panic!("not data");
                };
                assert!(!fin);
                received += payload.len();
                fin = f;
            }
            assert!(buf.len() < 16, "the decoder left {} bytes", buf.len());
        }
        assert_eq!(received, (1 << 20) + 3);
        assert!(fin && d.fin_received());
        assert!(d.finish(&buf).is_ok());
    }

    #[test]
    fn empty_data_is_skipped_and_empty_final_data_is_a_fin() {
        let mut buf = BytesMut::new();
        encode_header(CapsuleType::DATA, 0, &mut buf);
        encode_header(CapsuleType::FINAL_DATA, 0, &mut buf);
        let mut d = CapsuleDecoder::new(0);
        assert_eq!(
            decode_all(&mut d, &mut buf),
            vec![Decoded::Data {
                payload: Bytes::new(),
                fin: true
            }]
        );
        encode_header(CapsuleType::DATA, 1, &mut buf);
        assert_eq!(
            d.decode(&mut buf),
            Err(CapsuleError::DataAfterFin(CapsuleType::DATA))
        );
    }

    #[test]
    fn a_stream_ending_inside_data_is_truncated() {
        let mut buf = BytesMut::new();
        encode_header(CapsuleType::DATA, 10, &mut buf);
        buf.put_slice(b"12345");
        let mut d = CapsuleDecoder::new(0);
        assert_eq!(decode_all(&mut d, &mut buf).len(), 1);
        assert_eq!(d.finish(&buf), Err(CapsuleError::Truncated(0)));
    }

    #[test]
    fn udp_payload_under_context_zero() {
        let p = UdpProxyingPayload::udp(&b"dns query"[..]);
        let capsule = p.to_capsule();
        assert_eq!(capsule.kind, CapsuleType::DATAGRAM);
        assert_eq!(&capsule.value[..], b"\x00dns query");
        let back = UdpProxyingPayload::parse(capsule.value).unwrap();
        assert_eq!(back.into_udp().as_deref(), Some(&b"dns query"[..]));
        // Context ID 2 (a registered extension elsewhere) is not a UDP payload.
        let other = UdpProxyingPayload::parse(Bytes::from_static(b"\x02xyz")).unwrap();
        assert_eq!(other.context_id, 2);
        assert_eq!(other.into_udp(), None);
        assert_eq!(
            UdpProxyingPayload::parse(Bytes::new()),
            Err(DatagramError::MissingContextId)
        );
        // A 2-byte varint cut after its first byte.
        assert_eq!(
            UdpProxyingPayload::parse(Bytes::from_static(b"\x40")),
            Err(DatagramError::MissingContextId)
        );
    }

    /// What `decode_from` makes of `wire` cut into `frames` at `cuts`: the whole
    /// capsules, the payload bytes, the FINs, and the outcome (the error, or `finish`'s).
    type Outcome = (Vec<Capsule>, Vec<u8>, usize, Result<(), CapsuleError>);

    fn decode_frames(max_len: usize, wire: &Bytes, cuts: &[usize]) -> Outcome {
        let mut d = CapsuleDecoder::new(max_len);
        let mut held = BytesMut::new();
        let (mut capsules, mut payload, mut fins) = (Vec::new(), Vec::new(), 0);
        let mut at = 0;
        for end in cuts.iter().copied().chain([wire.len()]) {
            let mut frame = wire.slice(at..end.max(at));
            at = end.max(at);
            loop {
                match d.decode_from(&mut held, &mut frame) {
                    Ok(Some(Decoded::Capsule(c))) => capsules.push(c),
                    Ok(Some(Decoded::Data { payload: p, fin })) => {
                        payload.extend_from_slice(&p);
                        fins += usize::from(fin);
                    }
                    Ok(None) => break,
                    Err(e) => return (capsules, payload, fins, Err(e)),
                }
            }
            assert!(frame.is_empty(), "Ok(None) with input left");
            assert!(held.len() <= 16 + max_len, "held {} bytes", held.len());
        }
        let end = d.finish(&held);
        (capsules, payload, fins, end)
    }

    /// The same through [`CapsuleDecoder::decode`] on one buffer.
    fn decode_whole(max_len: usize, wire: &[u8]) -> Outcome {
        let mut d = CapsuleDecoder::new(max_len);
        let mut buf = BytesMut::from(wire);
        let (mut capsules, mut payload, mut fins) = (Vec::new(), Vec::new(), 0);
        loop {
            match d.decode(&mut buf) {
                Ok(Some(Decoded::Capsule(c))) => capsules.push(c),
                Ok(Some(Decoded::Data { payload: p, fin })) => {
                    payload.extend_from_slice(&p);
                    fins += usize::from(fin);
                }
                Ok(None) => break,
                Err(e) => return (capsules, payload, fins, Err(e)),
            }
        }
        let end = d.finish(&buf);
        (capsules, payload, fins, end)
    }

    /// DATA with a 1-byte and a 2-byte length, an unknown capsule, an empty DATA, and a
    /// FINAL_DATA.
    fn mixed_wire() -> Bytes {
        let mut wire = BytesMut::new();
        Capsule::new(CapsuleType::DATA, &b"hello"[..]).encode(&mut wire);
        Capsule::new(CapsuleType(0x1234), vec![7u8; 9]).encode(&mut wire);
        Capsule::new(CapsuleType::DATA, (0..70u8).collect::<Vec<_>>()).encode(&mut wire);
        encode_header(CapsuleType::DATA, 0, &mut wire);
        Capsule::new(CapsuleType::DATAGRAM, &b"\x00dg"[..]).encode(&mut wire);
        Capsule::new(CapsuleType::FINAL_DATA, &b"end"[..]).encode(&mut wire);
        wire.freeze()
    }

    #[test]
    fn frames_cut_at_every_pair_of_byte_boundaries_decode_as_one_buffer_does() {
        let wire = mixed_wire();
        let whole = decode_whole(16, &wire);
        assert_eq!(whole.1.len(), 5 + 70 + 3);
        assert_eq!((whole.0.len(), whole.2, whole.3.clone()), (2, 1, Ok(())));
        for i in 0..=wire.len() {
            for j in i..=wire.len() {
                assert_eq!(
                    decode_frames(16, &wire, &[i, j]),
                    whole,
                    "cut at {i} and {j}"
                );
            }
        }
        // One byte per frame.
        let every: Vec<usize> = (1..wire.len()).collect();
        assert_eq!(decode_frames(16, &wire, &every), whole);
    }

    #[test]
    fn a_data_payload_is_a_slice_of_its_frame_and_only_a_cut_header_is_held() {
        let mut wire = BytesMut::new();
        encode_header(CapsuleType::DATA, 100, &mut wire);
        wire.put_slice(&[1u8; 100]);
        let wire = wire.freeze();
        let header = wire.len() - 100;
        // The header cut after its second byte: two bytes held, the rest taken from the
        // second frame without copying.
        let (first, second) = (wire.slice(..2), wire.slice(2..60));
        let mut d = CapsuleDecoder::new(0);
        let mut held = BytesMut::new();
        let mut frame = first;
        assert_eq!(d.decode_from(&mut held, &mut frame).unwrap(), None);
        assert_eq!(held.len(), 2);
        let mut frame = second.clone();
        let Some(Decoded::Data {
            payload,
            fin: false,
        }) = d.decode_from(&mut held, &mut frame).unwrap()
        else {
            panic!("no payload");
        };
        assert!(held.is_empty());
        assert_eq!(payload.len(), 60 - header);
        let inside = second.as_ptr_range();
        assert!(inside.contains(&payload.as_ptr()), "the payload was copied");
        // The next frame's bytes are the payload's rest, again in place.
        let mut frame = wire.slice(60..);
        let Some(Decoded::Data { payload, .. }) = d.decode_from(&mut held, &mut frame).unwrap()
        else {
            panic!("no payload");
        };
        assert_eq!(payload.as_ptr(), wire[60..].as_ptr());
        assert_eq!(d.decode_from(&mut held, &mut frame).unwrap(), None);
        assert!(d.finish(&held).is_ok());
    }

    #[test]
    fn chunked_decoding_refuses_what_whole_decoding_refuses() {
        // A capsule over the bound, its header cut across frames and not.
        let mut wire = BytesMut::new();
        Capsule::new(CapsuleType::DATA, &b"ok"[..]).encode(&mut wire);
        encode_header(CapsuleType::AVAILABLE_SERVICES, 1 << 20, &mut wire);
        let wire = wire.freeze();
        let whole = decode_whole(64, &wire);
        assert!(matches!(whole.3, Err(CapsuleError::TooLong { .. })));
        for i in 0..=wire.len() {
            assert_eq!(decode_frames(64, &wire, &[i]), whole, "cut at {i}");
        }
        // DATA after FINAL_DATA.
        let mut wire = BytesMut::new();
        encode_header(CapsuleType::FINAL_DATA, 0, &mut wire);
        Capsule::new(CapsuleType::DATA, &b"late"[..]).encode(&mut wire);
        let wire = wire.freeze();
        let whole = decode_whole(64, &wire);
        assert_eq!(whole.3, Err(CapsuleError::DataAfterFin(CapsuleType::DATA)));
        for i in 0..=wire.len() {
            assert_eq!(decode_frames(64, &wire, &[i]), whole, "cut at {i}");
        }
        // Ending inside a capsule's header.
        let cut = mixed_wire().slice(..3);
        assert_eq!(
            decode_frames(16, &cut, &[1]).3,
            Err(CapsuleError::Truncated(3))
        );
    }

    fn arb_type() -> impl Strategy<Value = CapsuleType> {
        prop_oneof![
            Just(CapsuleType::DATAGRAM),
            Just(CapsuleType::AVAILABLE_SERVICES),
            Just(CapsuleType::CONNECTION_REQUEST),
            (0..=VARINT_MAX)
                .prop_map(CapsuleType)
                .prop_filter("not streamed", |t| !t.is_streamed()),
        ]
    }

    proptest! {
        #[test]
        fn whole_capsules_round_trip_at_any_split(
            capsules in proptest::collection::vec(
                (arb_type(), proptest::collection::vec(any::<u8>(), 0..64)), 0..8),
            split in 1usize..50,
        ) {
            let mut wire = BytesMut::new();
            let capsules: Vec<Capsule> =
                capsules.into_iter().map(|(t, v)| Capsule::new(t, v)).collect();
            for c in &capsules {
                c.encode(&mut wire);
            }
            let mut d = CapsuleDecoder::new(64);
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for chunk in wire.chunks(split) {
                buf.put_slice(chunk);
                while let Some(Decoded::Capsule(c)) = d.decode(&mut buf).unwrap() {
                    got.push(c);
                }
            }
            prop_assert_eq!(got, capsules);
            prop_assert!(d.finish(&buf).is_ok());
        }

        #[test]
        fn data_payload_round_trips_at_any_split(
            parts in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..100), 0..6),
            split in 1usize..70,
        ) {
            let mut wire = BytesMut::new();
            for p in &parts {
                encode_header(CapsuleType::DATA, p.len() as u64, &mut wire);
                wire.put_slice(p);
            }
            encode_header(CapsuleType::FINAL_DATA, 0, &mut wire);
            let mut d = CapsuleDecoder::new(0);
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            let mut fins = 0;
            for chunk in wire.chunks(split) {
                buf.put_slice(chunk);
                while let Some(item) = d.decode(&mut buf).unwrap() {
                    let Decoded::Data { payload, fin } = item else { panic!("not data") };
                    got.extend_from_slice(&payload);
                    fins += usize::from(fin);
                }
            }
            prop_assert_eq!(got, parts.concat());
            prop_assert_eq!(fins, 1);
        }

        #[test]
        fn any_stream_in_any_frames_decodes_as_one_buffer_does(
            wire in proptest::collection::vec(any::<u8>(), 0..300),
            mut cuts in proptest::collection::vec(0usize..300, 0..8),
            max_len in 0usize..40,
        ) {
            let wire = Bytes::from(wire);
            cuts.retain(|&c| c <= wire.len());
            cuts.sort_unstable();
            prop_assert_eq!(decode_frames(max_len, &wire, &cuts), decode_whole(max_len, &wire));
        }

        #[test]
        fn capsule_streams_in_any_frames_decode_as_one_buffer_does(
            capsules in proptest::collection::vec(
                (prop_oneof![Just(CapsuleType::DATA), arb_type()],
                 proptest::collection::vec(any::<u8>(), 0..=64)), 0..8),
            mut cuts in proptest::collection::vec(0usize..800, 0..12),
        ) {
            let mut wire = BytesMut::new();
            for (t, v) in capsules {
                Capsule::new(t, v).encode(&mut wire);
            }
            encode_header(CapsuleType::FINAL_DATA, 0, &mut wire);
            let wire = wire.freeze();
            cuts.retain(|&c| c <= wire.len());
            cuts.sort_unstable();
            let whole = decode_whole(64, &wire);
            prop_assert_eq!(whole.2, 1);
            prop_assert_eq!(decode_frames(64, &wire, &cuts), whole);
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut d = CapsuleDecoder::new(32);
            let mut buf = BytesMut::from(&data[..]);
            while let Ok(Some(_)) = d.decode(&mut buf) {}
            let _ = d.finish(&buf);
        }
    }
}
