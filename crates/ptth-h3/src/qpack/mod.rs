//! QPACK field-section coding (RFC 9204) with a dynamic table capacity of 0, and the RFC 9114 §4.3 checks on the result.
//!
//! This module is sans-IO: it turns field lists into the bytes of a HEADERS frame payload
//! and back. It does not read or write streams, and it never opens the encoder and decoder
//! streams' dynamic-table machinery: we advertise `SETTINGS_QPACK_MAX_TABLE_CAPACITY = 0`
//! (the default), so every field section we send has Required Insert Count 0 and every
//! section that references the dynamic table is a `QPACK_DECOMPRESSION_FAILED`.
//!
//! ```text
//! http::request::Parts ─[request_fields]─▶ Vec<Field> ─[encode]─▶ HEADERS payload
//! HEADERS payload ─[decode]─▶ Vec<Field> ─[parse_request]─▶ (http::request::Parts, :protocol)
//! ```
//!
//! ```
//! use ptth_h3::qpack;
//!
//! let request = http::Request::get("https://example.com/hello").body(()).unwrap();
//! let (parts, ()) = request.into_parts();
//! let mut block = bytes::BytesMut::new();
//! qpack::encode(&qpack::request_fields(&parts, None), &mut block);
//!
//! let fields = qpack::decode(&block, 16 * 1024).unwrap();
//! let (decoded, protocol) = qpack::parse_request(fields).unwrap();
//! assert_eq!(decoded.uri, "https://example.com/hello");
//! assert_eq!(protocol, None);
//! ```

mod huffman;
mod message;
mod prefix_int;
mod static_table;

#[doc(hidden)]
pub mod fuzz_harness;

#[cfg(test)]
mod tests;

use bytes::{BufMut, Bytes, BytesMut};

pub use message::{
    parse_request, parse_response, parse_trailers, request_fields, response_fields, trailer_fields,
    MessageError, H3_MESSAGE_ERROR,
};

/// One field line: lowercase name bytes and value bytes (pseudo-headers like ":method"
/// included, in order).
pub type Field = (Bytes, Bytes);

/// RFC 9204 §6: the decoder could not interpret a field section.
pub const QPACK_DECOMPRESSION_FAILED: u64 = 0x200;
/// RFC 9204 §6: the decoder could not interpret an encoder-stream instruction.
pub const QPACK_ENCODER_STREAM_ERROR: u64 = 0x201;
/// RFC 9204 §6: the encoder could not interpret a decoder-stream instruction.
pub const QPACK_DECODER_STREAM_ERROR: u64 = 0x202;
/// RFC 9114 §8.1: the peer's message exceeded a limit we set.
pub const H3_EXCESSIVE_LOAD: u64 = 0x107;

/// Why a field section could not be decoded. Every variant but
/// [`QpackError::FieldSectionTooLarge`] is peer misbehaviour that RFC 9204 §2.2 makes a
/// connection error of type `QPACK_DECOMPRESSION_FAILED`.
#[non_exhaustive]
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum QpackError {
    /// The section ended inside a representation, integer or string.
    #[error("field section truncated")]
    Truncated,
    /// A prefixed integer exceeds 62 bits (RFC 9204 §4.1.1).
    #[error("prefixed integer exceeds 62 bits")]
    BadPrefixInt,
    /// A Huffman-coded string has bad padding or contains EOS (RFC 7541 §5.2).
    #[error("invalid Huffman-coded string")]
    BadHuffman,
    /// A field line references the dynamic table, whose capacity we set to 0.
    #[error("reference to the dynamic table, whose capacity is 0")]
    DynamicReference,
    /// The section prefix names a nonzero Required Insert Count; with capacity 0 only 0 is valid.
    #[error("encoded Required Insert Count {0} is not 0")]
    RequiredInsertCount(u64),
    /// The section prefix gives a negative Base (RFC 9204 §4.5.1.2).
    #[error("negative Base in the field section prefix")]
    NegativeBase,
    /// A static-table index past the table's 99 entries.
    #[error("static table index {0} out of range")]
    BadStaticIndex(u64),
    /// The decoded section exceeds our `SETTINGS_MAX_FIELD_SECTION_SIZE` (RFC 9114 §4.2.2).
    #[error("field section exceeds {limit} bytes")]
    FieldSectionTooLarge {
        /// The limit that was exceeded.
        limit: u64,
    },
}

impl QpackError {
    /// The HTTP/3 error code for this error: `QPACK_DECOMPRESSION_FAILED` for every decoding
    /// failure, and `H3_EXCESSIVE_LOAD` for a section that decoded fine but is over our limit.
    pub fn h3_code(&self) -> u64 {
        match self {
            Self::FieldSectionTooLarge { .. } => H3_EXCESSIVE_LOAD,
            _ => QPACK_DECOMPRESSION_FAILED,
        }
    }

    /// Whether the whole connection must be closed. RFC 9204 §2.2 makes a section that fails
    /// to decode a connection error. A section over our size limit is not a QPACK failure:
    /// with capacity 0 there is no table state to fall out of step, so refusing only that
    /// request or response (RFC 9114 §4.2.2) is enough.
    pub fn is_connection_error(&self) -> bool {
        !matches!(self, Self::FieldSectionTooLarge { .. })
    }
}

/// Encodes a field section (Required Insert Count 0, Base 0). Uses static-table indexed field
/// lines when name and value match, literal with static name reference when only the name
/// matches, else literal with literal name; Huffman-codes strings when that is shorter.
///
/// Names are written as given: callers pass lowercase names (RFC 9114 §4.2).
pub fn encode(fields: &[Field], out: &mut BytesMut) {
    // RFC 9204 §4.5.1: Required Insert Count 0 (8-bit prefix), then Sign 0 and Delta Base 0.
    out.put_u8(0x00);
    out.put_u8(0x00);
    for (name, value) in fields {
        match static_table::find(name, value) {
            // RFC 9204 §4.5.2: `1 T index(6)`, T = 1 for the static table.
            static_table::Match::Field(index) => prefix_int::encode(index, 6, 0xc0, out),
            // RFC 9204 §4.5.4: `0 1 N T index(4)`, N = 0, T = 1; then the value.
            static_table::Match::Name(index) => {
                prefix_int::encode(index, 4, 0x50, out);
                write_string(value, 7, 0x00, out);
            }
            // RFC 9204 §4.5.6: `0 0 1 N H name-length(3)`, name, then the value.
            static_table::Match::None => {
                write_string(name, 3, 0x20, out);
                write_string(value, 7, 0x00, out);
            }
        }
    }
}

/// Writes a string literal (RFC 9204 §4.1.2) whose length has a `prefix_bits` prefix and
/// whose Huffman flag is the bit just above it.
fn write_string(s: &[u8], prefix_bits: u8, flags: u8, out: &mut BytesMut) {
    let huffman_len = huffman::encoded_len(s);
    if huffman_len < s.len() {
        prefix_int::encode(
            huffman_len as u64,
            prefix_bits,
            flags | 1 << prefix_bits,
            out,
        );
        huffman::encode(s, out);
    } else {
        prefix_int::encode(s.len() as u64, prefix_bits, flags, out);
        out.put_slice(s);
    }
}

/// Decodes a field section. `max_size` bounds the RFC 9114 §4.2.2 size (the sum of name
/// length, value length and 32 per field); exceeding it is
/// [`QpackError::FieldSectionTooLarge`].
pub fn decode(block: &[u8], max_size: u64) -> Result<Vec<Field>, QpackError> {
    let mut reader = Reader { rest: block };

    // RFC 9204 §4.5.1.1: with MaxEntries 0, the only valid Encoded Required Insert Count is 0.
    let encoded_insert_count = reader.int(8)?;
    if encoded_insert_count != 0 {
        return Err(QpackError::RequiredInsertCount(encoded_insert_count));
    }
    // RFC 9204 §4.5.1.2: "An endpoint MUST treat a field block with a Sign bit of 1 as
    // invalid if the value of Required Insert Count is less than or equal to the value of
    // Delta Base." With Required Insert Count 0 that is every Sign bit of 1. With Sign 0 the
    // Base is Delta Base, which static references do not use.
    let sign = reader.peek()? & 0x80 != 0;
    reader.int(7)?;
    if sign {
        return Err(QpackError::NegativeBase);
    }

    let mut fields = Vec::new();
    let mut size: u64 = 0;
    while let Some(&first) = reader.rest.first() {
        let field = if first & 0x80 != 0 {
            // RFC 9204 §4.5.2 Indexed Field Line: `1 T index(6)`.
            if first & 0x40 == 0 {
                return Err(QpackError::DynamicReference);
            }
            let (name, value) = static_entry(reader.int(6)?)?;
            (
                Bytes::from_static(name.as_bytes()),
                Bytes::from_static(value.as_bytes()),
            )
        } else if first & 0x40 != 0 {
            // RFC 9204 §4.5.4 Literal Field Line with Name Reference: `0 1 N T index(4)`.
            // The N bit only restricts how intermediaries may re-encode the line; we never
            // index anything, so it is dropped.
            if first & 0x10 == 0 {
                return Err(QpackError::DynamicReference);
            }
            let (name, _) = static_entry(reader.int(4)?)?;
            let value = reader.string(7)?;
            (Bytes::from_static(name.as_bytes()), value)
        } else if first & 0x20 != 0 {
            // RFC 9204 §4.5.6 Literal Field Line with Literal Name: `0 0 1 N H length(3)`.
            let name = reader.string(3)?;
            let value = reader.string(7)?;
            (name, value)
        } else {
            // RFC 9204 §4.5.3 Indexed Field Line with Post-Base Index (`0001`) and §4.5.5
            // Literal Field Line with Post-Base Name Reference (`0000`) both address the
            // dynamic table.
            return Err(QpackError::DynamicReference);
        };
        // RFC 9114 §4.2.2: name length plus value length plus 32 per field.
        size = size
            .saturating_add(field.0.len() as u64)
            .saturating_add(field.1.len() as u64)
            .saturating_add(32);
        if size > max_size {
            return Err(QpackError::FieldSectionTooLarge { limit: max_size });
        }
        fields.push(field);
    }
    Ok(fields)
}

fn static_entry(index: u64) -> Result<(&'static str, &'static str), QpackError> {
    static_table::get(index).ok_or(QpackError::BadStaticIndex(index))
}

/// A cursor over the rest of a field section.
struct Reader<'a> {
    rest: &'a [u8],
}

impl Reader<'_> {
    fn peek(&self) -> Result<u8, QpackError> {
        self.rest.first().copied().ok_or(QpackError::Truncated)
    }

    fn int(&mut self, prefix_bits: u8) -> Result<u64, QpackError> {
        let (value, used) = prefix_int::decode(self.rest, prefix_bits)?;
        self.rest = self.rest.get(used..).ok_or(QpackError::Truncated)?;
        Ok(value)
    }

    /// Reads a string literal whose Huffman flag sits just above a `prefix_bits` length prefix.
    fn string(&mut self, prefix_bits: u8) -> Result<Bytes, QpackError> {
        let huffman = self.peek()? & (1 << prefix_bits) != 0;
        let len = self.int(prefix_bits)?;
        let len = usize::try_from(len).map_err(|_| QpackError::Truncated)?;
        if len > self.rest.len() {
            return Err(QpackError::Truncated);
        }
        let (raw, rest) = self.rest.split_at(len);
        self.rest = rest;
        if huffman {
            // Huffman codes are at least 5 bits, so the output is at most 8/5 of the input.
            let mut decoded = Vec::with_capacity(len + len / 2);
            huffman::decode(raw, &mut decoded)?;
            Ok(Bytes::from(decoded))
        } else {
            Ok(Bytes::copy_from_slice(raw))
        }
    }
}
