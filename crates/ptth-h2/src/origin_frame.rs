//! ORIGIN frames (RFC 8336, HTTP/2 frame type 0xc) for draft-bt `h2-reverse`: the HTTP/2 framing plus two byte-stream wrappers.
//!
//! The payload codec ([`OriginEntry`], [`OriginFrame`], [`OriginFrameError`]) lives in
//! `ptth-core` (shared with HTTP/3's RFC 9412 ORIGIN frame) and is re-exported here;
//! this module adds the 9-byte HTTP/2 header ([`FrameHeader`], [`OriginFrameExt::encode`]).
//!
//! draft-bt-httpbis-reverse-http (ptth digest §5): "The origin MUST immediately
//! send an ORIGIN frame" after its SETTINGS, listing the origins it claims,
//! and "Wildcards are allowed" in those entries, contrary to RFC 8336 §2.2.
//! The intermediary (our gateway) MUST read the entries; checking them against
//! the client certificate is done elsewhere, not here.
//!
//! Neither hyper nor h2 exposes ORIGIN frames, so this module works on the
//! HTTP/2 byte stream underneath them:
//!
//! ```text
//!  origin (HTTP/2 server)                         gateway (HTTP/2 client)
//!  hyper server conn                              hyper client conn
//!      │ writes SETTINGS, ...                         ▲ reads SETTINGS, ORIGIN, ...
//!  OriginFrameInjector ── inserts ORIGIN ──►      OriginFrameTap ── OriginFrameWatch::wait()
//!      │ after the first frame                        ▲ copies the first ORIGIN frame
//!  TLS / any IO  ═══════════════════════════════  TLS / any IO
//! ```
//!
//! h2 0.4 ignores frames of unknown type (`codec/framed_read.rs`, `Kind::Unknown
//! => Ok(None)`), as RFC 9113 §4.1 requires, so the tap passes the ORIGIN
//! frame through unchanged.
//!
//! This module does not do TLS, does not compare entries with certificates and
//! does not maintain an RFC 8336 Origin Set across several ORIGIN frames: the
//! gateway acts on the first one, which draft-bt requires to come immediately.

mod injector;
mod tap;

#[cfg(test)]
mod io_tests;
#[cfg(test)]
mod tests;

use bytes::{BufMut, Bytes, BytesMut};

pub use ptth_core::{OriginEntry, OriginFrame, OriginFrameError};

pub use injector::OriginFrameInjector;
pub use tap::{OriginFrameTap, OriginFrameWatch};

/// RFC 9113 §6.5 frame type of SETTINGS, the first frame of a server preface.
const SETTINGS_FRAME_TYPE: u8 = 0x4;

/// An HTTP/2 frame header (RFC 9113 §4.1): the 9 bytes in front of every frame.
///
/// ```text
/// HTTP Frame {
///   Length (24),
///   Type (8),
///   Flags (8),
///   Reserved (1),
///   Stream Identifier (31),
///   Frame Payload (..),
/// }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FrameHeader {
    length: u32,
    frame_type: u8,
    flags: u8,
    stream_id: u32,
}

impl FrameHeader {
    /// Size of an encoded frame header.
    pub const LEN: usize = 9;
    /// Largest payload length the 24-bit Length field can carry.
    pub const MAX_LENGTH: u32 = (1 << 24) - 1;
    /// Largest 31-bit stream identifier.
    pub const MAX_STREAM_ID: u32 = (1 << 31) - 1;

    /// Builds a header; `None` if `length` or `stream_id` does not fit its field.
    pub fn new(length: u32, frame_type: u8, flags: u8, stream_id: u32) -> Option<Self> {
        if length > Self::MAX_LENGTH || stream_id > Self::MAX_STREAM_ID {
            return None;
        }
        Some(Self {
            length,
            frame_type,
            flags,
            stream_id,
        })
    }

    /// Parses exactly one header. Every 9-byte input is a valid header.
    pub fn parse(bytes: &[u8; Self::LEN]) -> Self {
        let [l0, l1, l2, frame_type, flags, s0, s1, s2, s3] = *bytes;
        // RFC 9113 §4.1: "Reserved: A reserved 1-bit field. The semantics of
        // this bit are undefined, and the bit MUST remain unset (0x00) when
        // sending and MUST be ignored when receiving."
        let stream_id = u32::from_be_bytes([s0, s1, s2, s3]) & Self::MAX_STREAM_ID;
        Self {
            length: u32::from_be_bytes([0, l0, l1, l2]),
            frame_type,
            flags,
            stream_id,
        }
    }

    /// Parses the header at the start of `bytes`; `None` if fewer than 9 bytes are given.
    pub fn parse_prefix(bytes: &[u8]) -> Option<Self> {
        bytes.first_chunk::<{ Self::LEN }>().map(Self::parse)
    }

    /// Encodes the header, with the reserved bit unset.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let [_, l0, l1, l2] = self.length.to_be_bytes();
        let [s0, s1, s2, s3] = (self.stream_id & Self::MAX_STREAM_ID).to_be_bytes();
        [l0, l1, l2, self.frame_type, self.flags, s0, s1, s2, s3]
    }

    /// Payload length in bytes (the 24-bit Length field).
    pub fn length(&self) -> u32 {
        self.length
    }

    /// Payload length as a `usize`, for slicing and counting.
    pub fn payload_len(&self) -> usize {
        // A 24-bit value always fits a usize on the 32- and 64-bit targets we support.
        usize::try_from(self.length).unwrap_or(usize::MAX)
    }

    /// The frame type byte.
    pub fn frame_type(&self) -> u8 {
        self.frame_type
    }

    /// The flags byte.
    pub fn flags(&self) -> u8 {
        self.flags
    }

    /// The 31-bit stream identifier (reserved bit removed).
    pub fn stream_id(&self) -> u32 {
        self.stream_id
    }
}

/// HTTP/2 framing for the shared payload codec [`ptth_core::OriginFrame`].
pub trait OriginFrameExt {
    /// Encodes the whole HTTP/2 frame: header (type 0xc, flags 0, stream 0) and payload.
    fn encode(&self) -> Bytes;
}

impl OriginFrameExt for OriginFrame {
    fn encode(&self) -> Bytes {
        let payload = self.encode_payload();
        let mut out = BytesMut::with_capacity(FrameHeader::LEN + payload.len());
        // RFC 8336 Appendix A: receivers ignore the frame "If the frame occurs upon
        // any stream except stream 0" (step 3) or "If any of the flags 0x1, 0x2,
        // 0x4, or 0x8 are set" (step 4); so: stream 0, no flags.
        let header = FrameHeader {
            // `OriginFrame::new` and `parse_payload` keep the payload within 24 bits.
            length: u32::try_from(payload.len())
                .unwrap_or(FrameHeader::MAX_LENGTH)
                .min(FrameHeader::MAX_LENGTH),
            frame_type: OriginFrame::FRAME_TYPE,
            flags: 0,
            stream_id: 0,
        };
        out.put_slice(&header.encode());
        out.put_slice(&payload);
        out.freeze()
    }
}

/// Entry points for fuzzers (`fuzz/`) and for the proptest that stands in for them.
#[doc(hidden)]
pub mod fuzz_harness {
    use super::{FrameHeader, OriginFrame, OriginFrameExt};

    /// Feeds arbitrary bytes to the payload parser, the frame-header parser and
    /// the tap's frame scanner. Must never panic except on a broken invariant.
    pub fn fuzz_origin_frame(data: &[u8]) {
        if let Ok(frame) = OriginFrame::parse_payload(data) {
            // A strictly parsed payload re-encodes to the same bytes.
            let encoded = frame.encode();
            assert_eq!(encoded.get(FrameHeader::LEN..), Some(data));
        }
        if let Some(first) = data.first_chunk::<{ FrameHeader::LEN }>() {
            let header = FrameHeader::parse(first);
            assert_eq!(FrameHeader::parse_prefix(data), Some(header));
            let mut expected = *first;
            // The reserved bit is dropped on parse and written as 0.
            expected[5] &= 0x7f;
            assert_eq!(header.encode(), expected);
        }
        // The first byte picks a split size, so headers straddle chunk boundaries.
        let chunk = usize::from(data.first().copied().unwrap_or(1).max(1));
        super::tap::fuzz_scanner(data, chunk);
    }
}
