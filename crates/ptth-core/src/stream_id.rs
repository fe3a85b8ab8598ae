//! QUIC stream identifiers, RFC 9297 quarter stream IDs, and the role-aware mapping
//! between them that reversed HTTP/3 needs.
//!
//! RFC 9297 §2.1 defines the quarter stream ID as the request stream's ID divided by
//! four, which assumes requests ride client-initiated bidirectional streams. In reversed
//! HTTP/3 (Potato, bt `h3-reverse`) the gateway, which is the QUIC *server*, sends the
//! requests, so they ride server-initiated streams. [`QsidMapping`] says which.

use std::fmt;

use bytes::{Buf, BufMut};

/// RFC 9000 §16: the largest value a variable-length integer can hold, 2^62 − 1.
pub const VARINT_MAX: u64 = (1 << 62) - 1;

/// RFC 9297 §5: `H3_DATAGRAM_ERROR` (0x33), the connection error for a malformed
/// datagram, including a quarter stream ID above 2^60 − 1.
pub const H3_DATAGRAM_ERROR: u64 = 0x33;

/// RFC 9114 §8.1: `H3_REQUEST_REJECTED` (0x010b). PTTH -00 lets the gateway reset
/// requests the origin sends on a reversed connection with it.
pub const H3_REQUEST_REJECTED: u64 = 0x010b;

/// The offset the PTTH -00 TODO list floats for quarter stream IDs of requests on
/// server-initiated streams: 2^61 (`2 << 60`).
pub const TWO_WAY_EXTENSION_OFFSET: u64 = 1 << 61;

/// A varint could not be encoded or decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VarIntError {
    /// The value exceeds 2^62 − 1.
    #[error("value {0} exceeds the varint maximum 2^62-1")]
    TooLarge(u64),
    /// The buffer ended inside a varint.
    #[error("buffer ended inside a varint")]
    UnexpectedEnd,
}

/// How many bytes `value` takes as a QUIC varint (1, 2, 4 or 8), or `None` if too large.
pub fn varint_len(value: u64) -> Option<usize> {
    match value {
        0..=0x3f => Some(1),
        0x40..=0x3fff => Some(2),
        0x4000..=0x3fff_ffff => Some(4),
        0x4000_0000..=VARINT_MAX => Some(8),
        _ => None,
    }
}

/// Writes `value` as a QUIC variable-length integer in its shortest form (RFC 9000 §16).
pub fn encode_varint(value: u64, buf: &mut impl BufMut) -> Result<(), VarIntError> {
    // RFC 9000 §16: the two most significant bits of the first byte give the length:
    // 00 = 1 byte, 01 = 2, 10 = 4, 11 = 8.
    match varint_len(value) {
        Some(1) => buf.put_u8(value as u8),
        Some(2) => buf.put_u16(0x4000 | value as u16),
        Some(4) => buf.put_u32(0x8000_0000 | value as u32),
        Some(_) => buf.put_u64(0xc000_0000_0000_0000 | value),
        None => return Err(VarIntError::TooLarge(value)),
    }
    Ok(())
}

/// Reads one QUIC variable-length integer. Non-shortest encodings are accepted, as RFC
/// 9000 §16 allows ("values do not need to be encoded on the minimum number of bytes").
/// On error the buffer is left unchanged.
pub fn decode_varint(buf: &mut impl Buf) -> Result<u64, VarIntError> {
    let first = *buf.chunk().first().ok_or(VarIntError::UnexpectedEnd)?;
    let len = 1usize << (first >> 6);
    if buf.remaining() < len {
        return Err(VarIntError::UnexpectedEnd);
    }
    let value = match len {
        1 => u64::from(buf.get_u8()),
        2 => u64::from(buf.get_u16() & 0x3fff),
        4 => u64::from(buf.get_u32() & 0x3fff_ffff),
        _ => buf.get_u64() & VARINT_MAX,
    };
    Ok(value)
}

/// Which endpoint opened a stream (RFC 9000 §2.1, bit 0x01 of the stream ID).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The QUIC client.
    Client,
    /// The QUIC server.
    Server,
}

/// Whether a stream is bidirectional (RFC 9000 §2.1, bit 0x02 of the stream ID).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dir {
    /// Bidirectional.
    Bi,
    /// Unidirectional.
    Uni,
}

/// A QUIC stream ID (0..=2^62 − 1).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(u64);

/// A value is out of range for the ID type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{value} is out of range (maximum {max})")]
#[non_exhaustive]
pub struct OutOfRange {
    value: u64,
    max: u64,
}

impl StreamId {
    /// The ID of the `index`-th stream of the given initiator and direction.
    pub fn new(initiator: Side, dir: Dir, index: u64) -> Result<Self, OutOfRange> {
        let bits = match initiator {
            Side::Client => 0,
            Side::Server => 1,
        } | match dir {
            Dir::Bi => 0,
            Dir::Uni => 2,
        };
        let value = index
            .checked_mul(4)
            .and_then(|v| v.checked_add(bits))
            .filter(|&v| v <= VARINT_MAX)
            .ok_or(OutOfRange {
                value: index,
                max: VARINT_MAX >> 2,
            })?;
        Ok(Self(value))
    }

    /// The raw value.
    pub fn into_inner(self) -> u64 {
        self.0
    }

    /// Who opened the stream.
    pub fn initiator(self) -> Side {
        if self.0 & 1 == 0 {
            Side::Client
        } else {
            Side::Server
        }
    }

    /// Its direction.
    pub fn dir(self) -> Dir {
        if self.0 & 2 == 0 {
            Dir::Bi
        } else {
            Dir::Uni
        }
    }

    /// Its position among streams of the same type (`id >> 2`).
    pub fn index(self) -> u64 {
        self.0 >> 2
    }
}

impl TryFrom<u64> for StreamId {
    type Error = OutOfRange;

    fn try_from(value: u64) -> Result<Self, Self::Error> {
        if value > VARINT_MAX {
            return Err(OutOfRange {
                value,
                max: VARINT_MAX,
            });
        }
        Ok(Self(value))
    }
}

impl fmt::Debug for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StreamId({})", self.0)
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// An RFC 9297 quarter stream ID as it appears at the start of an HTTP datagram.
///
/// [`TryFrom<u64>`] enforces RFC 9297's bound of 2^60 − 1. Values up to 2^62 − 1 can only
/// be made with [`QuarterStreamId::from_wire`], for the PTTH -00 two-way extension, and
/// [`QsidMapping::decode`] rejects them unless that extension is in use.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QuarterStreamId(u64);

impl QuarterStreamId {
    /// RFC 9297 §2.1: "This field is a variable-length integer ... with a maximum value of
    /// 2^60 − 1" (the largest stream ID divided by four).
    pub const MAX: u64 = (1 << 60) - 1;

    /// Any value a varint can carry, as read off the wire; not yet checked against the
    /// RFC 9297 bound, which depends on the mapping.
    pub fn from_wire(value: u64) -> Result<Self, OutOfRange> {
        if value > VARINT_MAX {
            return Err(OutOfRange {
                value,
                max: VARINT_MAX,
            });
        }
        Ok(Self(value))
    }

    /// The raw value.
    pub fn into_inner(self) -> u64 {
        self.0
    }

    /// Whether the value is within RFC 9297's bound.
    pub fn is_within_rfc9297_bound(self) -> bool {
        self.0 <= Self::MAX
    }

    /// Writes the value as a varint.
    pub fn write(self, buf: &mut impl BufMut) {
        // The invariant (≤ 2^62 − 1) makes encoding infallible.
        let _ = encode_varint(self.0, buf);
    }
}

impl TryFrom<u64> for QuarterStreamId {
    type Error = OutOfRange;

    fn try_from(value: u64) -> Result<Self, Self::Error> {
        if value > Self::MAX {
            return Err(OutOfRange {
                value,
                max: Self::MAX,
            });
        }
        Ok(Self(value))
    }
}

impl fmt::Debug for QuarterStreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "QuarterStreamId({})", self.0)
    }
}

/// Why a stream ID or quarter stream ID could not be mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QsidError {
    /// The stream is not a request stream under this mapping.
    #[error("stream {stream} is not a request stream under the {mapping:?} mapping")]
    WrongStreamType {
        /// The stream.
        stream: StreamId,
        /// The mapping in use.
        mapping: QsidMapping,
    },
    /// The quarter stream ID exceeds 2^60 − 1 (or, under the extension, is in the gap
    /// between the two halves).
    #[error("quarter stream ID {0} is out of range for this mapping")]
    OutOfRange(u64),
    /// The datagram is too short to hold a quarter stream ID.
    #[error("datagram too short for a quarter stream ID")]
    Truncated,
}

impl QsidError {
    /// The HTTP/3 error code to close the connection with: RFC 9297 §2.1 "Receipt of an
    /// HTTP/3 Datagram that includes a larger value MUST be treated as an HTTP/3
    /// connection error of type H3_DATAGRAM_ERROR (0x33)", and §3.1 for malformed ones.
    pub fn h3_error_code(&self) -> u64 {
        H3_DATAGRAM_ERROR
    }
}

/// Which streams carry requests, and so how stream IDs map to quarter stream IDs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QsidMapping {
    /// Ordinary HTTP/3: requests on client-initiated bidi streams; `sid = 4q`.
    Forward,
    /// Reversed HTTP/3 (Potato §4.3, bt `h3-reverse`): requests on server-initiated bidi
    /// streams; `sid = 4q + 1`.
    Reversed,
    /// PTTH -00 private extension, requests in both directions on one connection: origin
    /// requests on client-bidi streams map to `q = sid/4`; gateway requests on
    /// server-bidi streams to `q = floor(sid/4) + 2^61`. This violates RFC 9297's bound,
    /// so use it only when both sides explicitly enabled it.
    TwoWayExtension,
}

impl QsidMapping {
    /// Maps a request stream to the quarter stream ID that goes on the wire.
    pub fn encode(self, stream: StreamId) -> Result<QuarterStreamId, QsidError> {
        let wrong = || QsidError::WrongStreamType {
            stream,
            mapping: self,
        };
        if stream.dir() != Dir::Bi {
            return Err(wrong());
        }
        // Potato §4.3: "the Quarter Stream ID is the stream ID divided by four, discarding
        // any remainder"; the remainder must be the request stream type of this mapping.
        let q = stream.index();
        let value = match (self, stream.initiator()) {
            (Self::Forward, Side::Client) | (Self::Reversed, Side::Server) => q,
            (Self::TwoWayExtension, Side::Client) => q,
            // PTTH -00 TODO: "stream_id / 4 + (2 << 60)".
            (Self::TwoWayExtension, Side::Server) => q + TWO_WAY_EXTENSION_OFFSET,
            _ => return Err(wrong()),
        };
        Ok(QuarterStreamId(value))
    }

    /// Maps a received quarter stream ID back to its request stream.
    pub fn decode(self, qsid: QuarterStreamId) -> Result<StreamId, QsidError> {
        let q = qsid.into_inner();
        let (index, side) = match self {
            Self::Forward | Self::Reversed if q > QuarterStreamId::MAX => {
                // RFC 9297 §2.1: a value above 2^60 − 1 is H3_DATAGRAM_ERROR.
                return Err(QsidError::OutOfRange(q));
            }
            Self::Forward => (q, Side::Client),
            // Potato §4.3: "the stream ID is four times the Quarter Stream ID plus one".
            Self::Reversed => (q, Side::Server),
            Self::TwoWayExtension if q <= QuarterStreamId::MAX => (q, Side::Client),
            Self::TwoWayExtension => {
                let index = q - TWO_WAY_EXTENSION_OFFSET.min(q);
                if q < TWO_WAY_EXTENSION_OFFSET || index > QuarterStreamId::MAX {
                    return Err(QsidError::OutOfRange(q));
                }
                (index, Side::Server)
            }
        };
        StreamId::new(side, Dir::Bi, index).map_err(|_| QsidError::OutOfRange(q))
    }

    /// Writes the quarter stream ID of `stream` at the start of a datagram payload.
    pub fn write(self, stream: StreamId, buf: &mut impl BufMut) -> Result<(), QsidError> {
        self.encode(stream)?.write(buf);
        Ok(())
    }

    /// Reads the quarter stream ID at the start of a datagram payload and maps it to its
    /// request stream; the rest of `buf` is the datagram's payload.
    pub fn read(self, buf: &mut impl Buf) -> Result<StreamId, QsidError> {
        let value = decode_varint(buf).map_err(|_| QsidError::Truncated)?;
        let qsid = QuarterStreamId::from_wire(value).map_err(|_| QsidError::OutOfRange(value))?;
        self.decode(qsid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sid(v: u64) -> StreamId {
        StreamId::try_from(v).unwrap()
    }

    fn wire(mapping: QsidMapping, v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        mapping.write(sid(v), &mut out).unwrap();
        out
    }

    #[test]
    fn varint_every_width() {
        // RFC 9000 Appendix A.1 examples, plus the boundaries of each width.
        let cases: &[(u64, &[u8])] = &[
            (0, &[0x00]),
            (37, &[0x25]),
            (63, &[0x3f]),
            (64, &[0x40, 0x40]),
            (15293, &[0x7b, 0xbd]),
            (16383, &[0x7f, 0xff]),
            (16384, &[0x80, 0x00, 0x40, 0x00]),
            (494_878_333, &[0x9d, 0x7f, 0x3e, 0x7d]),
            ((1 << 30) - 1, &[0xbf, 0xff, 0xff, 0xff]),
            (1 << 30, &[0xc0, 0, 0, 0, 0x40, 0, 0, 0]),
            (
                151_288_809_941_952_652,
                &[0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c],
            ),
            (VARINT_MAX, &[0xff; 8]),
        ];
        for &(value, bytes) in cases {
            let mut out = Vec::new();
            encode_varint(value, &mut out).unwrap();
            assert_eq!(out, bytes, "{value}");
            assert_eq!(varint_len(value), Some(bytes.len()));
            assert_eq!(decode_varint(&mut &bytes[..]), Ok(value));
        }
        // Non-minimal encodings decode (RFC 9000 A.1: 0x4025 is 37).
        assert_eq!(decode_varint(&mut &[0x40u8, 0x25][..]), Ok(37));
        assert_eq!(
            encode_varint(VARINT_MAX + 1, &mut Vec::new()),
            Err(VarIntError::TooLarge(VARINT_MAX + 1))
        );
        assert_eq!(decode_varint(&mut &[][..]), Err(VarIntError::UnexpectedEnd));
        let mut short: &[u8] = &[0x80, 0, 0];
        assert_eq!(decode_varint(&mut short), Err(VarIntError::UnexpectedEnd));
        assert_eq!(short.len(), 3, "buffer untouched on error");
    }

    #[test]
    fn stream_id_bits() {
        assert_eq!((sid(0).initiator(), sid(0).dir()), (Side::Client, Dir::Bi));
        assert_eq!((sid(1).initiator(), sid(1).dir()), (Side::Server, Dir::Bi));
        assert_eq!((sid(2).initiator(), sid(2).dir()), (Side::Client, Dir::Uni));
        assert_eq!((sid(3).initiator(), sid(3).dir()), (Side::Server, Dir::Uni));
        assert_eq!(StreamId::new(Side::Server, Dir::Bi, 2).unwrap(), sid(9));
        assert!(StreamId::try_from(VARINT_MAX).is_ok());
        assert!(StreamId::try_from(VARINT_MAX + 1).is_err());
        assert!(StreamId::new(Side::Client, Dir::Bi, 1 << 60).is_err());
        assert_eq!(sid(4097).into_inner(), 4097);
    }

    #[test]
    fn digest_4_4_table() {
        use QsidMapping::*;
        // Normal H3, client-bidi: 0/4/8 -> 0/1/2.
        for (s, q, w) in [(0, 0, [0x00]), (4, 1, [0x01]), (8, 2, [0x02])] {
            assert_eq!(Forward.encode(sid(s)).unwrap().into_inner(), q);
            assert_eq!(wire(Forward, s), w);
            assert_eq!(Forward.read(&mut &w[..]).unwrap(), sid(s));
        }
        // Reversed H3 (Potato and bt), server-bidi: 1/5/9 -> 0/1/2.
        for (s, q, w) in [(1, 0, [0x00]), (5, 1, [0x01]), (9, 2, [0x02])] {
            assert_eq!(Reversed.encode(sid(s)).unwrap().into_inner(), q);
            assert_eq!(wire(Reversed, s), w);
            assert_eq!(Reversed.read(&mut &w[..]).unwrap(), sid(s));
        }
        // Reversed H3, large ID: 4097 -> 1024 (`44 00`) -> 4097.
        assert_eq!(wire(Reversed, 4097), [0x44, 0x00]);
        assert_eq!(Reversed.read(&mut &[0x44u8, 0x00][..]).unwrap(), sid(4097));
    }

    #[test]
    fn qsid_at_every_varint_width() {
        for mapping in [QsidMapping::Forward, QsidMapping::Reversed] {
            let low = if mapping == QsidMapping::Forward {
                0
            } else {
                1
            };
            for (q, len) in [
                (63, 1),
                (64, 2),
                (16383, 2),
                (16384, 4),
                ((1 << 30) - 1, 4),
                (1 << 30, 8),
                (QuarterStreamId::MAX, 8),
            ] {
                let s = 4 * q + low;
                let bytes = wire(mapping, s);
                assert_eq!(bytes.len(), len, "{mapping:?} {q}");
                assert_eq!(mapping.read(&mut &bytes[..]).unwrap(), sid(s));
            }
        }
        // The largest RFC 9297 QSID: `CF FF FF FF FF FF FF FF`.
        assert_eq!(
            wire(QsidMapping::Forward, VARINT_MAX - 3),
            [0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]
        );
    }

    #[test]
    fn digest_3_8_two_way_extension() {
        use QsidMapping::TwoWayExtension as X;
        // Origin -> gateway OPTIONS on stream 0: QSID 0, unchanged.
        assert_eq!(wire(X, 0), [0x00]);
        assert_eq!(X.read(&mut &[0x00u8][..]).unwrap(), sid(0));
        // Gateway request #1 on stream 1: 2^61, `E0 00 00 00 00 00 00 00`.
        assert_eq!(
            X.encode(sid(1)).unwrap().into_inner(),
            2_305_843_009_213_693_952
        );
        assert_eq!(wire(X, 1), [0xe0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            X.read(&mut &[0xe0u8, 0, 0, 0, 0, 0, 0, 0][..]).unwrap(),
            sid(1)
        );
        // Gateway request #2 on stream 5: 2^61 + 1, `E0 00 00 00 00 00 00 01`.
        assert_eq!(wire(X, 5), [0xe0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(
            X.read(&mut &[0xe0u8, 0, 0, 0, 0, 0, 0, 1][..]).unwrap(),
            sid(5)
        );
        // Without the extension those wire values are above the RFC 9297 bound.
        let err = QsidMapping::Forward
            .read(&mut &[0xe0u8, 0, 0, 0, 0, 0, 0, 0][..])
            .unwrap_err();
        assert_eq!(err, QsidError::OutOfRange(1 << 61));
        assert_eq!(err.h3_error_code(), 0x33);
        // Without the extension, naive floor(sid/4) collides: 0 and 1 both give 0.
        assert_eq!(QsidMapping::Forward.encode(sid(0)).unwrap().into_inner(), 0);
        assert_eq!(
            QsidMapping::Reversed.encode(sid(1)).unwrap().into_inner(),
            0
        );
    }

    #[test]
    fn qsid_negative() {
        use QsidMapping::*;
        // Just above the RFC 9297 bound: 2^60.
        let over: &[u8] = &[0xd0, 0, 0, 0, 0, 0, 0, 0];
        for m in [Forward, Reversed] {
            assert_eq!(m.read(&mut &over[..]), Err(QsidError::OutOfRange(1 << 60)));
        }
        // In the extension, the gap between the halves is also invalid.
        assert_eq!(
            TwoWayExtension.read(&mut &over[..]),
            Err(QsidError::OutOfRange(1 << 60))
        );
        let top: &[u8] = &[0xff; 8];
        assert_eq!(
            TwoWayExtension.read(&mut &top[..]),
            Err(QsidError::OutOfRange(VARINT_MAX))
        );
        assert!(QuarterStreamId::try_from(QuarterStreamId::MAX + 1).is_err());
        assert!(QuarterStreamId::try_from(QuarterStreamId::MAX).is_ok());
        // Wrong parity / type.
        for (m, bad) in [
            (Forward, 1),
            (Forward, 2),
            (Forward, 3),
            (Reversed, 0),
            (Reversed, 2),
            (Reversed, 7),
            (TwoWayExtension, 2),
            (TwoWayExtension, 3),
        ] {
            assert!(
                matches!(m.encode(sid(bad)), Err(QsidError::WrongStreamType { .. })),
                "{m:?} {bad}"
            );
        }
        assert_eq!(Forward.read(&mut &[][..]), Err(QsidError::Truncated));
        assert_eq!(Forward.read(&mut &[0x40u8][..]), Err(QsidError::Truncated));
    }

    fn arb_mapping() -> impl Strategy<Value = QsidMapping> {
        prop_oneof![
            Just(QsidMapping::Forward),
            Just(QsidMapping::Reversed),
            Just(QsidMapping::TwoWayExtension)
        ]
    }

    proptest! {
        #[test]
        fn varint_round_trip(v in 0..=VARINT_MAX) {
            let mut out = Vec::new();
            encode_varint(v, &mut out).unwrap();
            prop_assert_eq!(Some(out.len()), varint_len(v));
            let mut slice = &out[..];
            prop_assert_eq!(decode_varint(&mut slice), Ok(v));
            prop_assert!(slice.is_empty());
        }

        #[test]
        fn qsid_bijection_from_streams(mapping in arb_mapping(), index in 0..=QuarterStreamId::MAX, server in any::<bool>()) {
            let side = if server { Side::Server } else { Side::Client };
            let s = StreamId::new(side, Dir::Bi, index).unwrap();
            match mapping.encode(s) {
                Ok(q) => {
                    prop_assert_eq!(mapping.decode(q), Ok(s));
                    let mut out = Vec::new();
                    q.write(&mut out);
                    prop_assert_eq!(mapping.read(&mut &out[..]), Ok(s));
                }
                Err(_) => prop_assert!(
                    (mapping == QsidMapping::Forward && server)
                        || (mapping == QsidMapping::Reversed && !server)
                ),
            }
        }

        #[test]
        fn qsid_bijection_from_wire(mapping in arb_mapping(), q in 0..=VARINT_MAX) {
            let qsid = QuarterStreamId::from_wire(q).unwrap();
            if let Ok(s) = mapping.decode(qsid) {
                prop_assert_eq!(mapping.encode(s), Ok(qsid));
            } else {
                prop_assert!(q > QuarterStreamId::MAX);
            }
        }

        #[test]
        fn read_never_panics(mapping in arb_mapping(), bytes in proptest::collection::vec(any::<u8>(), 0..10)) {
            let _ = mapping.read(&mut &bytes[..]);
        }
    }
}
