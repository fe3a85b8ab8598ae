//! The `ALPN` HTTP header field (RFC 7639) and its `Selected-ALPN` variant.
//!
//! PTTH -01 carries the list of protocols the origin will serve in an `ALPN` request
//! field, and the gateway's single choice in an `ALPN` response field.
//! draft-kazuho-httpbis-reverse-tunnel used `Selected-ALPN` for the response instead;
//! [`parse_single`] accepts both.
//!
//! Decisions on the RFC's canonical-form rules (documented here because the RFC only
//! constrains senders):
//! - We always *send* the canonical form: only bytes outside `tchar`, and `%`, are
//!   percent-encoded, with uppercase hex.
//! - We *accept* lowercase hex and needlessly encoded `tchar` bytes. Both decode to the
//!   same octets, and we compare decoded octets, never encoded strings, so accepting them
//!   creates no ambiguity. Syntax errors (a bare `%`, non-hex digits, a byte that is not
//!   a `tchar`) are rejected.
//! - Empty list elements are ignored, as RFC 9110 §5.6.1.2 requires of recipients; a
//!   field whose only elements are empty is an error ([`AlpnError::Empty`]).

use std::fmt;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::pct;

/// The `ALPN` header field name (RFC 7639 §2).
pub const ALPN: HeaderName = HeaderName::from_static("alpn");

/// The `Selected-ALPN` response field of draft-kazuho-httpbis-reverse-tunnel.
pub const SELECTED_ALPN: HeaderName = HeaderName::from_static("selected-alpn");

/// RFC 7301 §3.1: "Empty strings MUST NOT be included and byte strings MUST NOT be
/// truncated." The length prefix is one octet, so an ID is 1..=255 bytes.
const MAX_PROTOCOL_ID_LEN: usize = 255;

/// An ALPN protocol identifier: opaque bytes, such as `h2` or `c6 96 c9 a5`.
///
/// `Debug` and `Display` show the bytes as text when they are printable UTF-8, and the
/// RFC 7639 percent-encoded form otherwise.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProtocolId(Bytes);

impl ProtocolId {
    /// Wraps bytes without checking them. IDs parsed from the wire are always 1..=255
    /// bytes; see [`ProtocolId::try_from_bytes`] for a checked constructor.
    pub fn from_bytes(bytes: impl Into<Bytes>) -> Self {
        Self(bytes.into())
    }

    /// Wraps bytes, checking RFC 7301's 1..=255 length.
    pub fn try_from_bytes(bytes: impl Into<Bytes>) -> Result<Self, AlpnError> {
        let bytes = bytes.into();
        if bytes.is_empty() || bytes.len() > MAX_PROTOCOL_ID_LEN {
            return Err(AlpnError::BadLength { len: bytes.len() });
        }
        Ok(Self(bytes))
    }

    /// Wraps a static byte string (no allocation).
    pub const fn from_static(bytes: &'static [u8]) -> Self {
        Self(Bytes::from_static(bytes))
    }

    /// `http/1.1` (RFC 7301).
    pub const fn http11() -> Self {
        Self::from_static(b"http/1.1")
    }

    /// `h2` (RFC 9113).
    pub const fn h2() -> Self {
        Self::from_static(b"h2")
    }

    /// `h3` (RFC 9114).
    pub const fn h3() -> Self {
        Self::from_static(b"h3")
    }

    /// The raw identifier bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The identifier as `Bytes` (cheap clone).
    pub fn to_bytes(&self) -> Bytes {
        self.0.clone()
    }

    /// The identifier as text, if it is UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    /// The RFC 7639 wire form of this identifier (for example `http%2F1.1`).
    pub fn to_header_token(&self) -> String {
        // RFC 7639 §2: "Octets not allowed in tokens ([RFC7230], Section 3.2.6) MUST be
        // percent-encoded as per Section 2.1 of [RFC3986]. Consequently, the octet
        // representing the percent character "%" (hex 25) MUST be percent-encoded as
        // well." ... "Octets in the ALPN protocol MUST NOT be percent-encoded if they are
        // valid token characters except "%"." ... "When using percent-encoding, uppercase
        // hex digits MUST be used."
        pct::encode(&self.0, |b| b != b'%' && pct::is_tchar(b))
    }

    fn readable(&self) -> String {
        match self.as_str() {
            Some(s) if !s.chars().any(char::is_control) && !s.contains('%') => s.to_owned(),
            _ => self.to_header_token(),
        }
    }
}

impl fmt::Debug for ProtocolId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProtocolId({:?})", self.readable())
    }
}

impl fmt::Display for ProtocolId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.readable())
    }
}

impl From<&'static str> for ProtocolId {
    fn from(s: &'static str) -> Self {
        Self::from_static(s.as_bytes())
    }
}

/// Why an `ALPN` (or `Selected-ALPN`) field could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AlpnError {
    /// Neither `ALPN` nor (where accepted) `Selected-ALPN` is present.
    #[error("missing ALPN header field")]
    Missing,
    /// The field is present but lists no protocol.
    #[error("ALPN header field lists no protocol")]
    Empty,
    /// A field line holds bytes that are not visible ASCII.
    #[error("ALPN header field is not visible ASCII")]
    NotAscii,
    /// A list element contains a byte that is not allowed in a token.
    #[error("ALPN element {element:?} contains {byte:#04x}, which is not a token character")]
    InvalidCharacter {
        /// The offending element, as received.
        element: String,
        /// The offending byte.
        byte: u8,
    },
    /// A `%` not followed by two hex digits.
    #[error("ALPN element {element:?} has a malformed percent-encoding")]
    BadPercentEncoding {
        /// The offending element, as received.
        element: String,
    },
    /// A decoded identifier is empty or longer than 255 bytes (RFC 7301 §3.1).
    #[error("ALPN protocol identifier of {len} bytes (must be 1..=255)")]
    BadLength {
        /// Decoded length.
        len: usize,
    },
    /// A response field must name exactly one protocol.
    #[error("expected exactly one ALPN protocol, found {count}")]
    NotExactlyOne {
        /// How many were found.
        count: usize,
    },
    /// `ALPN` and `Selected-ALPN` are both present and disagree.
    #[error("ALPN and Selected-ALPN disagree")]
    Conflict,
}

/// Encodes a list of identifiers as one `ALPN` field value: `h2, http%2F1.1`.
pub fn encode_list(ids: &[ProtocolId]) -> HeaderValue {
    let joined = ids
        .iter()
        .map(ProtocolId::to_header_token)
        .collect::<Vec<_>>()
        .join(", ");
    // Every byte is a tchar, ',' or ' ', all legal in a field value, so this cannot fail.
    HeaderValue::from_str(&joined).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Encodes one identifier, for an `ALPN` response field.
pub fn encode_single(id: &ProtocolId) -> HeaderValue {
    encode_list(std::slice::from_ref(id))
}

/// Parses every `ALPN` field line of `headers` into one list, in order.
pub fn parse_list(headers: &HeaderMap) -> Result<Vec<ProtocolId>, AlpnError> {
    parse_values(headers.get_all(ALPN).iter())
}

/// Parses the given field lines (all lines of one field) into one list.
pub fn parse_values<'a>(
    values: impl IntoIterator<Item = &'a HeaderValue>,
) -> Result<Vec<ProtocolId>, AlpnError> {
    let mut seen_line = false;
    let mut out = Vec::new();
    for value in values {
        seen_line = true;
        let text = value.to_str().map_err(|_| AlpnError::NotAscii)?;
        parse_str_into(text, &mut out)?;
    }
    if !seen_line {
        return Err(AlpnError::Missing);
    }
    if out.is_empty() {
        return Err(AlpnError::Empty);
    }
    Ok(out)
}

/// Parses one field value (`h2, http%2F1.1`) into a list.
pub fn parse_str(text: &str) -> Result<Vec<ProtocolId>, AlpnError> {
    let mut out = Vec::new();
    parse_str_into(text, &mut out)?;
    if out.is_empty() {
        return Err(AlpnError::Empty);
    }
    Ok(out)
}

fn parse_str_into(text: &str, out: &mut Vec<ProtocolId>) -> Result<(), AlpnError> {
    // RFC 7639 §2: `ALPN = 1#protocol-id`, `protocol-id = token`.
    for raw in text.split(',') {
        // RFC 9110 §5.6.1: list elements are separated by a comma and optional whitespace
        // (`OWS = *( SP / HTAB )`).
        let element = raw.trim_matches(|c| c == ' ' || c == '\t');
        // RFC 9110 §5.6.1.2: "a recipient MUST parse and ignore a reasonable number of
        // empty list elements".
        if element.is_empty() {
            continue;
        }
        out.push(parse_element(element)?);
    }
    Ok(())
}

fn parse_element(element: &str) -> Result<ProtocolId, AlpnError> {
    if let Some(&byte) = element.as_bytes().iter().find(|&&b| !pct::is_tchar(b)) {
        return Err(AlpnError::InvalidCharacter {
            element: element.to_owned(),
            byte,
        });
    }
    let decoded = pct::decode(element.as_bytes()).map_err(|_| AlpnError::BadPercentEncoding {
        element: element.to_owned(),
    })?;
    ProtocolId::try_from_bytes(decoded)
}

/// Reads the single protocol a gateway chose: exactly one value of `ALPN`, or, if `ALPN`
/// is absent, of `Selected-ALPN` (draft-kazuho-httpbis-reverse-tunnel).
pub fn parse_single(headers: &HeaderMap) -> Result<ProtocolId, AlpnError> {
    let alpn = one_of(headers, &ALPN)?;
    let selected = one_of(headers, &SELECTED_ALPN)?;
    match (alpn, selected) {
        (Some(a), Some(s)) if a != s => Err(AlpnError::Conflict),
        (Some(a), _) => Ok(a),
        (None, Some(s)) => Ok(s),
        (None, None) => Err(AlpnError::Missing),
    }
}

fn one_of(headers: &HeaderMap, name: &HeaderName) -> Result<Option<ProtocolId>, AlpnError> {
    if !headers.contains_key(name) {
        return Ok(None);
    }
    let mut list = parse_values(headers.get_all(name).iter())?;
    if list.len() != 1 {
        return Err(AlpnError::NotExactlyOne { count: list.len() });
    }
    Ok(list.pop())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn map(lines: &[&str]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for l in lines {
            m.append(ALPN, HeaderValue::from_str(l).unwrap());
        }
        m
    }

    #[test]
    fn encodes_digest_examples() {
        // Digest §3.2: `ALPN: h2, http%2F1.1`.
        let v = encode_list(&[ProtocolId::h2(), ProtocolId::http11()]);
        assert_eq!(v, "h2, http%2F1.1");
        assert_eq!(encode_single(&ProtocolId::http11()), "http%2F1.1");
        let v = encode_list(&[ProtocolId::from("h3qx"), ProtocolId::h2()]);
        assert_eq!(v, "h3qx, h2");
    }

    #[test]
    fn encodes_non_ascii_and_percent() {
        let potato = ProtocolId::from_static(&[0xc6, 0x96, 0xc9, 0xa5]);
        assert_eq!(potato.to_header_token(), "%C6%96%C9%A5");
        assert_eq!(ProtocolId::from("a%b").to_header_token(), "a%25b");
        assert_eq!(ProtocolId::from("a b").to_header_token(), "a%20b");
        assert_eq!(
            format!("{:?}", ProtocolId::http11()),
            "ProtocolId(\"http/1.1\")"
        );
        assert_eq!(ProtocolId::from("a%b").to_string(), "a%25b");
    }

    #[test]
    fn digest_3_2_offer_with_h3qx() {
        // Digest §3.2: "ALPN: h3qx, h2, http%2F1.1".
        let ids = vec![
            ProtocolId::from("h3qx"),
            ProtocolId::h2(),
            ProtocolId::http11(),
        ];
        assert_eq!(encode_list(&ids), "h3qx, h2, http%2F1.1");
        assert_eq!(parse_str("h3qx, h2, http%2F1.1").unwrap(), ids);
    }

    #[test]
    fn parses_multiple_lines_and_ows() {
        let got = parse_list(&map(&["h3qx,\th2", "http%2F1.1"])).unwrap();
        assert_eq!(
            got,
            vec![
                ProtocolId::from("h3qx"),
                ProtocolId::h2(),
                ProtocolId::http11()
            ]
        );
    }

    #[test]
    fn lenient_decoding_choices() {
        assert_eq!(parse_str("http%2f1.1").unwrap(), vec![ProtocolId::http11()]);
        // A needlessly encoded tchar ('h' = 0x68) decodes to the same identifier.
        assert_eq!(parse_str("%682").unwrap(), vec![ProtocolId::h2()]);
        // Empty elements are ignored.
        assert_eq!(parse_str(", h2 ,,").unwrap(), vec![ProtocolId::h2()]);
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(parse_list(&HeaderMap::new()), Err(AlpnError::Missing));
        assert_eq!(parse_list(&map(&[""])), Err(AlpnError::Empty));
        assert_eq!(parse_list(&map(&[" , ,"])), Err(AlpnError::Empty));
        assert!(matches!(
            parse_str("http%2"),
            Err(AlpnError::BadPercentEncoding { .. })
        ));
        assert!(matches!(
            parse_str("http%zz1"),
            Err(AlpnError::BadPercentEncoding { .. })
        ));
        assert!(matches!(
            parse_str("http/1.1"),
            Err(AlpnError::InvalidCharacter { byte: b'/', .. })
        ));
        assert!(matches!(
            parse_str("h2 h3"),
            Err(AlpnError::InvalidCharacter { byte: b' ', .. })
        ));
        assert!(matches!(
            parse_str(r#""h2""#),
            Err(AlpnError::InvalidCharacter { .. })
        ));
        let long = "a".repeat(256);
        assert_eq!(parse_str(&long), Err(AlpnError::BadLength { len: 256 }));
        let mut m = HeaderMap::new();
        m.insert(ALPN, HeaderValue::from_bytes(b"h2\xff").unwrap());
        assert_eq!(parse_list(&m), Err(AlpnError::NotAscii));
    }

    #[test]
    fn single_value_and_selected_alpn() {
        assert_eq!(parse_single(&map(&["h2"])).unwrap(), ProtocolId::h2());
        assert_eq!(
            parse_single(&map(&["h2, http%2F1.1"])),
            Err(AlpnError::NotExactlyOne { count: 2 })
        );
        assert_eq!(
            parse_single(&map(&["h2", "h2"])),
            Err(AlpnError::NotExactlyOne { count: 2 })
        );
        assert_eq!(parse_single(&HeaderMap::new()), Err(AlpnError::Missing));
        let mut m = HeaderMap::new();
        m.insert(SELECTED_ALPN, HeaderValue::from_static("http%2F1.1"));
        assert_eq!(parse_single(&m).unwrap(), ProtocolId::http11());
        m.insert(ALPN, HeaderValue::from_static("h2"));
        assert_eq!(parse_single(&m), Err(AlpnError::Conflict));
        m.insert(ALPN, HeaderValue::from_static("http%2F1.1"));
        assert_eq!(parse_single(&m).unwrap(), ProtocolId::http11());
    }

    fn arb_id() -> impl Strategy<Value = ProtocolId> {
        proptest::collection::vec(any::<u8>(), 1..=255).prop_map(ProtocolId::from_bytes)
    }

    proptest! {
        #[test]
        fn list_round_trip(ids in proptest::collection::vec(arb_id(), 1..8)) {
            let mut m = HeaderMap::new();
            m.insert(ALPN, encode_list(&ids));
            prop_assert_eq!(parse_list(&m).unwrap(), ids);
        }

        #[test]
        fn single_round_trip(id in arb_id()) {
            let mut m = HeaderMap::new();
            m.insert(ALPN, encode_single(&id));
            prop_assert_eq!(parse_single(&m).unwrap(), id);
        }

        #[test]
        fn encoding_is_canonical(id in arb_id()) {
            let token = id.to_header_token();
            // Only tchars, and no lowercase hex after a '%'.
            prop_assert!(token.bytes().all(pct::is_tchar));
            let bytes = token.as_bytes();
            for (i, &b) in bytes.iter().enumerate() {
                if b == b'%' {
                    prop_assert!(bytes[i + 1..i + 3].iter().all(|c| !c.is_ascii_lowercase()));
                }
            }
        }
    }
}
