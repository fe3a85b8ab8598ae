//! Prefixed integers (RFC 7541 §5.1), the integer encoding of every QPACK representation (RFC 9204 §4.1.1).

use bytes::{BufMut, BytesMut};

use super::QpackError;

/// RFC 9204 §4.1.1: "QPACK implementations MUST be able to decode integers up to and
/// including 62 bits long." Larger values are refused rather than wrapped.
pub(crate) const MAX: u64 = (1 << 62) - 1;

/// Appends `value` with an N-bit prefix (`prefix_bits` in 1..=8); `flags` holds the bits of
/// the first byte above the prefix and must not overlap it.
pub(crate) fn encode(value: u64, prefix_bits: u8, flags: u8, out: &mut BytesMut) {
    debug_assert!((1..=8).contains(&prefix_bits));
    let max_prefix = (1u64 << prefix_bits) - 1;
    debug_assert_eq!(u64::from(flags) & max_prefix, 0);
    if value < max_prefix {
        out.put_u8(flags | value as u8);
        return;
    }
    out.put_u8(flags | max_prefix as u8);
    let mut rest = value - max_prefix;
    while rest >= 0x80 {
        out.put_u8(0x80 | (rest & 0x7f) as u8);
        rest >>= 7;
    }
    out.put_u8(rest as u8);
}

/// Decodes an integer with an N-bit prefix from the start of `input`, ignoring the bits of
/// the first byte above the prefix. Returns the value and how many bytes it took.
pub(crate) fn decode(input: &[u8], prefix_bits: u8) -> Result<(u64, usize), QpackError> {
    debug_assert!((1..=8).contains(&prefix_bits));
    let first = *input.first().ok_or(QpackError::Truncated)?;
    let max_prefix = (1u64 << prefix_bits) - 1;
    let mut value = u64::from(first) & max_prefix;
    if value < max_prefix {
        return Ok((value, 1));
    }
    let mut shift = 0u32;
    for (i, &byte) in input.iter().enumerate().skip(1) {
        // Nine continuation bytes carry 63 bits; a tenth could only overflow the 62-bit limit.
        if shift > 56 {
            return Err(QpackError::BadPrefixInt);
        }
        // `value` is at most MAX (2^62 - 1) here and the addend below 2^63: no u64 overflow.
        value += u64::from(byte & 0x7f) << shift;
        if value > MAX {
            return Err(QpackError::BadPrefixInt);
        }
        if byte & 0x80 == 0 {
            return Ok((value, i + 1));
        }
        shift += 7;
    }
    Err(QpackError::Truncated)
}
