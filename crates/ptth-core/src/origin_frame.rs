//! RFC 8336 ORIGIN frame payloads: the Origin-Entry list codec shared by HTTP/2 (frame type 0xc) and HTTP/3 (RFC 9412, frame type 0x0c).
//!
//! draft-bt-httpbis-reverse-http (ptth digest §5): "The origin MUST immediately
//! send an ORIGIN frame" listing the origins it claims, "Wildcards are allowed"
//! in those entries, contrary to RFC 8336 §2.2. Both HTTP versions carry the same
//! payload, a sequence of `Origin-Entry { Origin-Len (16), ASCII-Origin (..) }`;
//! only the framing around it differs, so this module is the payload alone:
//!
//! ```text
//!  [OriginEntry, ...] ──OriginFrame::new──▶ OriginFrame ──encode_payload──▶ bytes
//!  bytes ──OriginFrame::parse_payload (strict)──▶ OriginFrame ──entries──▶ [OriginEntry]
//! ```
//!
//! `ptth-h2` adds the 9-byte HTTP/2 frame header and the byte-stream injector/tap;
//! `ptth-h3` sends and receives the payload on the HTTP/3 control stream. No I/O
//! here, no certificate checks (`ptth-auth`), no RFC 8336 Origin Set across frames.

use std::fmt;
use std::io;
use std::net::Ipv6Addr;
use std::str::FromStr;

use bytes::{BufMut, Bytes, BytesMut};

/// Largest payload [`OriginFrame::parse_payload`] accepts: what the 24-bit HTTP/2 Length field can carry.
const MAX_PARSE_LEN: usize = (1 << 24) - 1;

/// Everything that can go wrong while building, parsing or waiting for an ORIGIN frame.
///
/// The codec variants describe peer misbehaviour in the payload; the last
/// variants are reported only by the protocol crates while waiting for a frame
/// (`ptth_h2::OriginFrameWatch::wait`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OriginFrameError {
    /// The frame carries no Origin-Entry at all.
    #[error("ORIGIN frame carries no Origin-Entry")]
    NoEntries,
    /// Fewer than two bytes were left for an Origin-Len field.
    #[error(
        "ORIGIN payload truncated at offset {offset}: Origin-Len needs 2 bytes, {available} left"
    )]
    TruncatedLength {
        /// Payload offset of the Origin-Len field.
        offset: usize,
        /// Bytes that were left.
        available: usize,
    },
    /// An Origin-Len field promised more bytes than the payload has left.
    #[error(
        "ORIGIN payload truncated at offset {offset}: Origin-Len says {declared} bytes, {available} left"
    )]
    TruncatedOrigin {
        /// Payload offset of the ASCII-Origin field.
        offset: usize,
        /// The Origin-Len value.
        declared: usize,
        /// Bytes that were left.
        available: usize,
    },
    /// An Origin-Len of zero.
    #[error("empty ASCII-Origin at payload offset {offset}")]
    EmptyOrigin {
        /// Payload offset of the (empty) ASCII-Origin field.
        offset: usize,
    },
    /// A byte outside ASCII in an ASCII-Origin.
    #[error("non-ASCII byte 0x{byte:02x} in ASCII-Origin at offset {offset}")]
    NonAscii {
        /// Offset of the byte (in the payload when parsing, in the string otherwise).
        offset: usize,
        /// The offending byte.
        byte: u8,
    },
    /// ASCII, but not `scheme://host[:port]` with an optional `*.` wildcard label.
    #[error("malformed origin {origin:?}: {reason}")]
    MalformedOrigin {
        /// The origin text as received.
        origin: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// One origin is longer than the 16-bit Origin-Len can express.
    #[error("origin of {len} bytes does not fit a 16-bit Origin-Len")]
    OriginTooLong {
        /// Length of the origin in bytes.
        len: usize,
    },
    /// The payload is larger than this side accepts.
    #[error("ORIGIN payload of {len} bytes exceeds the limit of {max}")]
    PayloadTooLarge {
        /// Payload length (declared or computed).
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The connection ended (EOF) before an ORIGIN frame arrived.
    #[error("connection ended after {frames_seen} frames without an ORIGIN frame")]
    ConnectionClosed {
        /// Complete frame headers seen before the end.
        frames_seen: usize,
    },
    /// draft-bt requires the ORIGIN frame immediately; it was not among the first frames.
    #[error("no ORIGIN frame among the first {frames_seen} frames (draft-bt: the origin MUST send it immediately)")]
    NotSentImmediately {
        /// Frames seen before giving up.
        frames_seen: usize,
    },
    /// Reading from the connection failed before an ORIGIN frame arrived.
    #[error("I/O error before an ORIGIN frame arrived: {kind}")]
    Io {
        /// Kind of the I/O error (the error itself went to the reader).
        kind: io::ErrorKind,
    },
    /// The `ptth_h2::OriginFrameTap` was dropped before an ORIGIN frame arrived.
    #[error("the OriginFrameTap was dropped before an ORIGIN frame arrived")]
    TapDropped,
}

/// One ASCII-Origin: `scheme://host[:port]`, where `host` may start with a `*.` wildcard label.
///
/// The text is kept exactly as given (so it re-encodes byte for byte); compare
/// scheme and host case-insensitively. Accepted hosts are DNS-style names
/// (letters, digits, `-`, `_`, dot-separated labels of 1 to 63 bytes),
/// IPv4 literals (which are such names) and bracketed IPv6 literals.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OriginEntry {
    text: String,
    scheme_end: usize,
    host_start: usize,
    host_end: usize,
    port: Option<u16>,
}

impl OriginEntry {
    /// Parses and validates one origin.
    pub fn new(origin: &str) -> Result<Self, OriginFrameError> {
        Self::from_ascii(origin.as_bytes(), 0)
    }

    /// Validates `bytes`; `base` is added to byte offsets in errors.
    fn from_ascii(bytes: &[u8], base: usize) -> Result<Self, OriginFrameError> {
        if let Some((i, &byte)) = bytes.iter().enumerate().find(|(_, b)| !b.is_ascii()) {
            return Err(OriginFrameError::NonAscii {
                offset: base + i,
                byte,
            });
        }
        if bytes.len() > usize::from(u16::MAX) {
            return Err(OriginFrameError::OriginTooLong { len: bytes.len() });
        }
        // All bytes are ASCII, so this cannot fail; map the impossible error anyway.
        let text = std::str::from_utf8(bytes).map_err(|_| OriginFrameError::MalformedOrigin {
            origin: String::from_utf8_lossy(bytes).into_owned(),
            reason: "not UTF-8",
        })?;
        let parts = split_origin(text).map_err(|reason| OriginFrameError::MalformedOrigin {
            origin: text.to_owned(),
            reason,
        })?;
        Ok(Self {
            text: text.to_owned(),
            scheme_end: parts.scheme_end,
            host_start: parts.host_start,
            host_end: parts.host_end,
            port: parts.port,
        })
    }

    /// The origin as text, exactly as it appears on the wire.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The scheme, e.g. `https`.
    pub fn scheme(&self) -> &str {
        self.text.get(..self.scheme_end).unwrap_or_default()
    }

    /// The host including any `*.` prefix; IPv6 literals keep their brackets.
    pub fn host(&self) -> &str {
        self.text
            .get(self.host_start..self.host_end)
            .unwrap_or_default()
    }

    /// The explicit port, if any.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// Whether the host starts with a `*.` wildcard label (allowed by draft-bt, not by RFC 8336).
    pub fn is_wildcard(&self) -> bool {
        self.host().starts_with("*.")
    }

    /// The Origin-Len value; the constructor guarantees it fits 16 bits.
    fn wire_len(&self) -> u16 {
        u16::try_from(self.text.len()).unwrap_or(u16::MAX)
    }
}

impl fmt::Display for OriginEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for OriginEntry {
    type Err = OriginFrameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl AsRef<str> for OriginEntry {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

/// Byte positions found by [`split_origin`].
struct OriginParts {
    scheme_end: usize,
    host_start: usize,
    host_end: usize,
    port: Option<u16>,
}

/// Checks `scheme://host[:port]` (RFC 6454 §6.2 serialization, plus draft-bt wildcards).
fn split_origin(text: &str) -> Result<OriginParts, &'static str> {
    let Some(scheme_end) = text.find("://") else {
        return Err("missing \"://\"");
    };
    let scheme = text.get(..scheme_end).unwrap_or_default();
    // RFC 3986 §3.1: scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )
    let mut scheme_chars = scheme.bytes();
    match scheme_chars.next() {
        Some(first) if first.is_ascii_alphabetic() => {}
        Some(_) => return Err("scheme does not start with a letter"),
        None => return Err("empty scheme"),
    }
    if !scheme_chars.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.')) {
        return Err("invalid character in scheme");
    }

    let host_start = scheme_end + 3;
    let authority = text.get(host_start..).unwrap_or_default();
    let (host_len, port_text) = if let Some(after_bracket) = authority.strip_prefix('[') {
        let Some(close) = after_bracket.find(']') else {
            return Err("unterminated IPv6 literal");
        };
        let literal = after_bracket.get(..close).unwrap_or_default();
        if literal.parse::<Ipv6Addr>().is_err() {
            return Err("invalid IPv6 literal");
        }
        let host_len = close + 2;
        (host_len, authority.get(host_len..).unwrap_or_default())
    } else {
        let host_len = authority.find(':').unwrap_or(authority.len());
        let host = authority.get(..host_len).unwrap_or_default();
        // draft-bt-httpbis-reverse-http: "Wildcards are allowed", contrary to RFC 8336 §2.2, so that
        // wildcard certificates can be used. We accept them as a whole leftmost label only.
        let name = host.strip_prefix("*.").unwrap_or(host);
        check_dns_name(name)?;
        (host_len, authority.get(host_len..).unwrap_or_default())
    };

    let port = if port_text.is_empty() {
        None
    } else {
        let Some(digits) = port_text.strip_prefix(':') else {
            return Err("unexpected characters after the host");
        };
        if digits.is_empty() || digits.len() > 5 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err("invalid port");
        }
        Some(digits.parse::<u16>().map_err(|_| "port out of range")?)
    };

    Ok(OriginParts {
        scheme_end,
        host_start,
        host_end: host_start + host_len,
        port,
    })
}

/// Checks a DNS-style host name (also accepts IPv4 literals, which have the same shape).
fn check_dns_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty host");
    }
    if name.len() > 253 {
        return Err("host name longer than 253 bytes");
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("empty label in host");
        }
        if label.len() > 63 {
            return Err("label longer than 63 bytes in host");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
        {
            return Err(
                "invalid character in host (or a wildcard that is not a whole leftmost label)",
            );
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("host label starts or ends with '-'");
        }
    }
    Ok(())
}

/// The payload of an ORIGIN frame: the list of origins the sender claims (RFC 8336 §2, RFC 9412 §2).
///
/// ```text
/// Origin-Entry {            ORIGIN Frame {
///   Origin-Len (16),          Length (24), Type (8) = 0x0c, Flags (8) = 0,
///   ASCII-Origin (..),        Reserved (1), Stream Identifier (31) = 0,
/// }                           Origin-Entry (..) ...,
///                           }
/// ```
///
/// Unlike RFC 8336, which skips unparseable entries (Appendix A, step 6.1) and
/// permits a frame without entries, this type is strict: a reverse-HTTP
/// origin that claims nothing, or something malformed, is not routable.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OriginFrame {
    entries: Vec<OriginEntry>,
}

impl OriginFrame {
    /// RFC 8336 §2.1: the HTTP/2 ORIGIN frame type is 0xc; RFC 9412 §2 gives HTTP/3 the same value, 0x0c.
    pub const FRAME_TYPE: u8 = 0xc;
    /// Largest payload [`OriginFrame::new`] accepts: RFC 9113 §4.2's initial
    /// SETTINGS_MAX_FRAME_SIZE, which every peer must accept.
    pub const MAX_PAYLOAD_LEN: usize = 16_384;

    /// Builds a frame to send; errors if the list is empty or the payload would exceed [`Self::MAX_PAYLOAD_LEN`].
    pub fn new(entries: Vec<OriginEntry>) -> Result<Self, OriginFrameError> {
        if entries.is_empty() {
            return Err(OriginFrameError::NoEntries);
        }
        let frame = Self { entries };
        let len = frame.payload_len();
        if len > Self::MAX_PAYLOAD_LEN {
            return Err(OriginFrameError::PayloadTooLarge {
                len,
                max: Self::MAX_PAYLOAD_LEN,
            });
        }
        Ok(frame)
    }

    /// The entries, in wire order.
    pub fn entries(&self) -> &[OriginEntry] {
        &self.entries
    }

    /// Consumes the frame, returning its entries.
    pub fn into_entries(self) -> Vec<OriginEntry> {
        self.entries
    }

    /// Length of the encoded payload (without any frame header).
    pub fn payload_len(&self) -> usize {
        self.entries.iter().map(|e| 2 + e.text.len()).sum()
    }

    /// Encodes the payload: each entry as Origin-Len (16 bits) and ASCII-Origin, in order.
    pub fn encode_payload(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.payload_len());
        for entry in &self.entries {
            out.put_u16(entry.wire_len());
            out.put_slice(entry.text.as_bytes());
        }
        out.freeze()
    }

    /// Parses an ORIGIN frame payload (the bytes after the 9-byte header), strictly.
    ///
    /// Errors on a truncated Origin-Len or ASCII-Origin, an empty or non-ASCII
    /// or malformed origin, a payload without entries, or a payload longer
    /// than a frame can carry.
    pub fn parse_payload(payload: &[u8]) -> Result<Self, OriginFrameError> {
        let max = MAX_PARSE_LEN;
        if payload.len() > max {
            return Err(OriginFrameError::PayloadTooLarge {
                len: payload.len(),
                max,
            });
        }
        let mut entries = Vec::new();
        let mut rest = payload;
        while !rest.is_empty() {
            let offset = payload.len() - rest.len();
            // RFC 8336 §2.1: "Origin-Len: An unsigned, 16-bit integer indicating
            // the length, in octets, of the ASCII-Origin field."
            let Some((len_bytes, after_len)) = rest.split_first_chunk::<2>() else {
                return Err(OriginFrameError::TruncatedLength {
                    offset,
                    available: rest.len(),
                });
            };
            let declared = usize::from(u16::from_be_bytes(*len_bytes));
            let origin_offset = offset + 2;
            if declared == 0 {
                return Err(OriginFrameError::EmptyOrigin {
                    offset: origin_offset,
                });
            }
            let Some((ascii, tail)) = after_len.split_at_checked(declared) else {
                return Err(OriginFrameError::TruncatedOrigin {
                    offset: origin_offset,
                    declared,
                    available: after_len.len(),
                });
            };
            entries.push(OriginEntry::from_ascii(ascii, origin_offset)?);
            rest = tail;
        }
        if entries.is_empty() {
            return Err(OriginFrameError::NoEntries);
        }
        Ok(Self { entries })
    }
}
