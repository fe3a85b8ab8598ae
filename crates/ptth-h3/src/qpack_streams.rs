//! Checks the instructions on the peer's QPACK encoder and decoder streams (RFC 9204 §4.3,
//! §4.4) for an endpoint whose dynamic table capacity is zero in both directions.
//!
//! We advertise SETTINGS_QPACK_MAX_TABLE_CAPACITY = 0 and never insert into the peer's
//! table, so almost every instruction is an error; the only ones allowed are "Set Dynamic
//! Table Capacity" to 0 and "Stream Cancellation".

use bytes::{Buf, BytesMut};

use crate::frame::ProtocolError;

/// Reads a prefixed integer (RFC 7541 §5.1, used by RFC 9204 §4.1.1) whose first byte is
/// at the front of `buf`. Returns `None` when more bytes are needed.
fn prefix_int(buf: &[u8], prefix_bits: u8) -> Result<Option<(u64, usize)>, ()> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let max = (1u64 << prefix_bits) - 1;
    let mut value = u64::from(first) & max;
    if value < max {
        return Ok(Some((value, 1)));
    }
    let mut shift = 0u32;
    for (i, &b) in buf.iter().enumerate().skip(1) {
        // RFC 9204 §4.1.1: "QPACK implementations MUST be able to decode integers up to
        // and including 62 bits long"; anything longer is an error.
        if shift > 56 {
            return Err(());
        }
        value = value.checked_add(u64::from(b & 0x7f) << shift).ok_or(())?;
        shift += 7;
        if b & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    Ok(None)
}

/// Consumes complete instructions from the peer's encoder stream.
pub(crate) fn check_encoder_stream(buf: &mut BytesMut) -> Result<(), ProtocolError> {
    while let Some(&first) = buf.first() {
        // RFC 9204 §4.3.1: Set Dynamic Table Capacity is 0b001xxxxx with a 5-bit prefix.
        if first & 0xe0 == 0x20 {
            match prefix_int(buf, 5) {
                Ok(Some((0, used))) => buf.advance(used),
                // "The decoder MUST treat a new dynamic table capacity value that exceeds
                // this limit as a connection error of type QPACK_ENCODER_STREAM_ERROR."
                Ok(Some(_)) => {
                    return Err(ProtocolError::QpackEncoderStream(
                        "capacity above our maximum of 0",
                    ))
                }
                Ok(None) => return Ok(()),
                Err(()) => return Err(ProtocolError::QpackEncoderStream("integer overflow")),
            }
        } else {
            // Insert With Name Reference (1xxxxxxx), Insert With Literal Name (01xxxxxx)
            // and Duplicate (000xxxxx) all add an entry. RFC 9204 §3.2.2: "It is an error
            // if the encoder attempts to add an entry that is larger than the dynamic table
            // capacity; the decoder MUST treat this as a connection error of type
            // QPACK_ENCODER_STREAM_ERROR." Every entry is at least 32 bytes; ours is 0.
            return Err(ProtocolError::QpackEncoderStream(
                "insertion into a table of capacity 0",
            ));
        }
    }
    Ok(())
}

/// Consumes complete instructions from the peer's decoder stream.
pub(crate) fn check_decoder_stream(buf: &mut BytesMut) -> Result<(), ProtocolError> {
    while let Some(&first) = buf.first() {
        if first & 0x80 != 0 {
            // RFC 9204 §4.4.1: "If an encoder receives a Section Acknowledgment instruction
            // referring to a stream on which every encoded field section with a non-zero
            // Required Insert Count has already been acknowledged, this MUST be treated as
            // a connection error of type QPACK_DECODER_STREAM_ERROR." We never send one.
            return Err(ProtocolError::QpackDecoderStream(
                "section acknowledgment without dynamic references",
            ));
        } else if first & 0x40 != 0 {
            // §4.4.2 Stream Cancellation (01xxxxxx, 6-bit prefix): harmless, ignored.
            match prefix_int(buf, 6) {
                Ok(Some((_, used))) => buf.advance(used),
                Ok(None) => return Ok(()),
                Err(()) => return Err(ProtocolError::QpackDecoderStream("integer overflow")),
            }
        } else {
            // §4.4.3: "An encoder that receives an Insert Count Increment instruction that
            // would increase the Known Received Count beyond the number of entries sent
            // ... MUST treat this as a connection error of type QPACK_DECODER_STREAM_ERROR"
            // (and an increment of 0 is an error too). We sent no entries.
            return Err(ProtocolError::QpackDecoderStream(
                "insert count increment with no entries sent",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoder_stream() {
        let mut ok = BytesMut::from(&[0x20u8, 0x20][..]);
        assert!(check_encoder_stream(&mut ok).is_ok() && ok.is_empty());
        // A partial capacity instruction waits for more bytes.
        let mut partial = BytesMut::from(&[0x3fu8][..]);
        assert!(check_encoder_stream(&mut partial).is_ok() && partial.len() == 1);
        for bad in [
            &[0x21u8][..],
            &[0x3f, 0x01],
            &[0xc0, 0x01],
            &[0x40],
            &[0x00],
        ] {
            let mut b = BytesMut::from(bad);
            assert!(check_encoder_stream(&mut b).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn decoder_stream() {
        let mut ok = BytesMut::from(&[0x41u8, 0x7f, 0x05][..]);
        assert!(check_decoder_stream(&mut ok).is_ok() && ok.is_empty());
        for bad in [&[0x81u8][..], &[0x01], &[0x00]] {
            let mut b = BytesMut::from(bad);
            assert!(check_decoder_stream(&mut b).is_err());
        }
        assert!(prefix_int(&[0xff; 12], 7).is_err());
    }
}
