//! HTTP/3 frames (RFC 9114 §7), SETTINGS, the §8.1 error codes, and an incremental
//! decoder that streams DATA payloads instead of buffering whole frames.
//!
//! The decoder is sans-IO: the connection layer appends whatever the QUIC stream gave it
//! to a `BytesMut` and calls [`FrameDecoder::decode`] until it returns `Ok(None)`.

use std::collections::HashSet;

use bytes::{Buf, Bytes, BytesMut};
use ptth_core::{decode_varint, encode_varint, VarIntError};

// RFC 9114 §8.1, "HTTP/3 Error Codes".
/// No error; used when closing the connection or a stream gracefully.
pub const H3_NO_ERROR: u64 = 0x0100;
/// Peer violated the protocol in a way no more specific code covers.
pub const H3_GENERAL_PROTOCOL_ERROR: u64 = 0x0101;
/// An internal error in the HTTP stack.
pub const H3_INTERNAL_ERROR: u64 = 0x0102;
/// The peer created a stream that will not be accepted.
pub const H3_STREAM_CREATION_ERROR: u64 = 0x0103;
/// A stream required by the connection was closed or reset.
pub const H3_CLOSED_CRITICAL_STREAM: u64 = 0x0104;
/// A frame was not permitted in the current state or on the current stream.
pub const H3_FRAME_UNEXPECTED: u64 = 0x0105;
/// A frame that fails its layout requirements or has an invalid size.
pub const H3_FRAME_ERROR: u64 = 0x0106;
/// The peer is generating excessive load.
pub const H3_EXCESSIVE_LOAD: u64 = 0x0107;
/// A stream ID or push ID was used incorrectly.
pub const H3_ID_ERROR: u64 = 0x0108;
/// An error in the payload of a SETTINGS frame.
pub const H3_SETTINGS_ERROR: u64 = 0x0109;
/// No SETTINGS frame at the start of the control stream.
pub const H3_MISSING_SETTINGS: u64 = 0x010a;
/// A server rejected a request without performing any application processing.
pub const H3_REQUEST_REJECTED: u64 = ptth_core::H3_REQUEST_REJECTED;
/// The request or its response (including pushed response) is cancelled.
pub const H3_REQUEST_CANCELLED: u64 = 0x010c;
/// The client's stream terminated without containing a fully formed request.
pub const H3_REQUEST_INCOMPLETE: u64 = 0x010d;
/// An HTTP message was malformed and cannot be processed.
pub const H3_MESSAGE_ERROR: u64 = 0x010e;
/// The TCP connection established in response to a CONNECT request was reset.
pub const H3_CONNECT_ERROR: u64 = 0x010f;
/// The requested operation cannot be served over HTTP/3.
pub const H3_VERSION_FALLBACK: u64 = 0x0110;
/// RFC 9204 §6: the decoder failed to interpret an encoded field section.
pub const QPACK_DECOMPRESSION_FAILED: u64 = 0x0200;
/// RFC 9204 §6: the decoder failed to interpret an encoder instruction.
pub const QPACK_ENCODER_STREAM_ERROR: u64 = 0x0201;
/// RFC 9204 §6: the encoder failed to interpret a decoder instruction.
pub const QPACK_DECODER_STREAM_ERROR: u64 = 0x0202;
/// RFC 9297 §5: a malformed HTTP datagram or datagram-related violation.
pub const H3_DATAGRAM_ERROR: u64 = ptth_core::H3_DATAGRAM_ERROR;

// RFC 9114 §7.2 and §11.2.1, frame types.
/// DATA.
pub const DATA: u64 = 0x0;
/// HEADERS.
pub const HEADERS: u64 = 0x1;
/// CANCEL_PUSH.
pub const CANCEL_PUSH: u64 = 0x3;
/// SETTINGS.
pub const SETTINGS: u64 = 0x4;
/// PUSH_PROMISE.
pub const PUSH_PROMISE: u64 = 0x5;
/// GOAWAY.
pub const GOAWAY: u64 = 0x7;
/// MAX_PUSH_ID.
pub const MAX_PUSH_ID: u64 = 0xd;
/// RFC 9412 §2: ORIGIN, carrying an RFC 8336 Origin-Entry list ([`ptth_core::OriginFrame`]).
pub const ORIGIN: u64 = 0x0c;

// RFC 9114 §7.2.4.1, RFC 9204 §5, RFC 9220 §3, RFC 9297 §2.1.1: setting identifiers.
/// SETTINGS_QPACK_MAX_TABLE_CAPACITY.
pub const SETTINGS_QPACK_MAX_TABLE_CAPACITY: u64 = 0x1;
/// SETTINGS_MAX_FIELD_SECTION_SIZE.
pub const SETTINGS_MAX_FIELD_SECTION_SIZE: u64 = 0x6;
/// SETTINGS_QPACK_BLOCKED_STREAMS.
pub const SETTINGS_QPACK_BLOCKED_STREAMS: u64 = 0x7;
/// SETTINGS_ENABLE_CONNECT_PROTOCOL.
pub const SETTINGS_ENABLE_CONNECT_PROTOCOL: u64 = 0x8;
/// SETTINGS_H3_DATAGRAM.
pub const SETTINGS_H3_DATAGRAM: u64 = 0x33;

/// RFC 9114 §7.2.8: "Frame types of the format 0x1f * N + 0x21 for non-negative integer
/// values of N are reserved to exercise the requirement that unknown types be ignored."
/// The same form is reserved for settings (§7.2.4.1) and stream types (§6.2.3).
pub fn is_reserved(ty: u64) -> bool {
    ty >= 0x21 && (ty - 0x21) % 0x1f == 0
}

/// A malformed frame or SETTINGS payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// A frame ended before its fields did, or had bytes after them.
    #[error("malformed frame of type {ty:#x}: {what}")]
    Malformed {
        /// The frame type.
        ty: u64,
        /// What was wrong.
        what: &'static str,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame")]
    Truncated,
    /// An HTTP/2 frame type that HTTP/3 reserves (0x2, 0x6, 0x8, 0x9).
    #[error("HTTP/2-only frame type {0:#x}")]
    Http2Frame(u64),
    /// An HTTP/2 setting identifier (0x2..=0x5).
    #[error("HTTP/2-only setting {0:#x}")]
    Http2Setting(u64),
    /// A setting identifier appeared twice.
    #[error("duplicate setting {0:#x}")]
    DuplicateSetting(u64),
    /// A setting carried a value it cannot have.
    #[error("setting {id:#x} has invalid value {value}")]
    SettingValue {
        /// The setting identifier.
        id: u64,
        /// The value received.
        value: u64,
    },
    /// A non-DATA frame exceeded the size this endpoint buffers.
    #[error("frame of type {ty:#x} and length {len} exceeds the limit")]
    TooLarge {
        /// The frame type.
        ty: u64,
        /// The declared length.
        len: u64,
    },
}

/// A protocol violation, local or by the peer, that ends a stream or the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A frame could not be decoded.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A frame arrived on a stream or at a time it is not allowed.
    #[error("frame type {ty:#x} not allowed on {stream}")]
    UnexpectedFrame {
        /// The frame type.
        ty: u64,
        /// Which kind of stream it arrived on.
        stream: &'static str,
    },
    /// The control stream did not start with SETTINGS.
    #[error("control stream did not start with SETTINGS")]
    MissingSettings,
    /// A critical stream (control, QPACK) was closed or reset.
    #[error("critical stream closed: {0}")]
    ClosedCriticalStream(&'static str),
    /// A stream that must not be opened was opened.
    #[error("stream creation error: {0}")]
    StreamCreation(&'static str),
    /// A stream or push ID was used incorrectly.
    #[error("ID error: {0}")]
    Id(&'static str),
    /// SETTINGS contradict the transport or each other.
    #[error("settings error: {0}")]
    Settings(&'static str),
    /// The QPACK field section could not be decoded; carries the QPACK error code.
    #[error("QPACK decompression failed: {reason}")]
    Qpack {
        /// The wire code from the QPACK codec.
        code: u64,
        /// Why.
        reason: String,
    },
    /// A bad instruction on the peer's QPACK encoder stream.
    #[error("QPACK encoder stream error: {0}")]
    QpackEncoderStream(&'static str),
    /// A bad instruction on the peer's QPACK decoder stream.
    #[error("QPACK decoder stream error: {0}")]
    QpackDecoderStream(&'static str),
    /// A malformed HTTP message (a stream error).
    #[error("malformed message: {0}")]
    Message(String),
    /// A malformed HTTP datagram.
    #[error("datagram error: {0}")]
    Datagram(String),
    /// The peer sends more than this endpoint accepts.
    #[error("excessive load: {0}")]
    ExcessiveLoad(&'static str),
    /// The stream ended before a complete request was received.
    #[error("request incomplete")]
    RequestIncomplete,
    /// The QUIC connection is already closed; nothing is sent.
    #[error("connection already closed")]
    ConnectionGone,
}

/// The one mapping from our protocol errors to RFC 9114 §8.1 / RFC 9204 §6 / RFC 9297
/// wire codes.
pub fn wire_code(err: &ProtocolError) -> u64 {
    match err {
        ProtocolError::Frame(f) => match f {
            FrameError::Malformed { .. } | FrameError::Truncated => H3_FRAME_ERROR,
            // RFC 9114 §7.2.8: HTTP/2 frame types "MUST be treated as a connection error
            // of type H3_FRAME_UNEXPECTED".
            FrameError::Http2Frame(_) => H3_FRAME_UNEXPECTED,
            FrameError::Http2Setting(_)
            | FrameError::DuplicateSetting(_)
            | FrameError::SettingValue { .. } => H3_SETTINGS_ERROR,
            FrameError::TooLarge { .. } => H3_EXCESSIVE_LOAD,
        },
        ProtocolError::UnexpectedFrame { .. } => H3_FRAME_UNEXPECTED,
        ProtocolError::MissingSettings => H3_MISSING_SETTINGS,
        ProtocolError::ClosedCriticalStream(_) => H3_CLOSED_CRITICAL_STREAM,
        ProtocolError::StreamCreation(_) => H3_STREAM_CREATION_ERROR,
        ProtocolError::Id(_) => H3_ID_ERROR,
        ProtocolError::Settings(_) => H3_SETTINGS_ERROR,
        ProtocolError::Qpack { code, .. } => *code,
        ProtocolError::QpackEncoderStream(_) => QPACK_ENCODER_STREAM_ERROR,
        ProtocolError::QpackDecoderStream(_) => QPACK_DECODER_STREAM_ERROR,
        ProtocolError::Message(_) => H3_MESSAGE_ERROR,
        ProtocolError::Datagram(_) => H3_DATAGRAM_ERROR,
        ProtocolError::ExcessiveLoad(_) => H3_EXCESSIVE_LOAD,
        ProtocolError::RequestIncomplete => H3_REQUEST_INCOMPLETE,
        ProtocolError::ConnectionGone => H3_NO_ERROR,
    }
}

/// The settings an endpoint sends or received.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// SETTINGS_QPACK_MAX_TABLE_CAPACITY; this crate always sends 0.
    pub qpack_max_table_capacity: u64,
    /// SETTINGS_MAX_FIELD_SECTION_SIZE; `None` means unlimited (the RFC default).
    pub max_field_section_size: Option<u64>,
    /// SETTINGS_QPACK_BLOCKED_STREAMS.
    pub qpack_blocked_streams: u64,
    /// SETTINGS_ENABLE_CONNECT_PROTOCOL (RFC 9220).
    pub enable_connect_protocol: bool,
    /// SETTINGS_H3_DATAGRAM (RFC 9297).
    pub h3_datagram: bool,
}

impl Settings {
    /// Parses a SETTINGS payload.
    pub fn decode(mut payload: &[u8]) -> Result<Self, FrameError> {
        let mut seen = HashSet::new();
        let mut settings = Settings::default();
        let malformed = FrameError::Malformed {
            ty: SETTINGS,
            what: "truncated setting",
        };
        while payload.has_remaining() {
            let id = decode_varint(&mut payload).map_err(|_| malformed.clone())?;
            let value = decode_varint(&mut payload).map_err(|_| malformed.clone())?;
            // RFC 9114 §7.2.4: "The same setting identifier MUST NOT occur more than once
            // in the SETTINGS frame. A receiver MAY treat the presence of duplicate setting
            // identifiers as a connection error of type H3_SETTINGS_ERROR."
            if !seen.insert(id) {
                return Err(FrameError::DuplicateSetting(id));
            }
            let flag = |value| match value {
                0 => Ok(false),
                1 => Ok(true),
                // RFC 9220 §3 / RFC 9297 §2.1.1: values other than 0 and 1 are errors.
                _ => Err(FrameError::SettingValue { id, value }),
            };
            match id {
                SETTINGS_QPACK_MAX_TABLE_CAPACITY => settings.qpack_max_table_capacity = value,
                SETTINGS_MAX_FIELD_SECTION_SIZE => settings.max_field_section_size = Some(value),
                SETTINGS_QPACK_BLOCKED_STREAMS => settings.qpack_blocked_streams = value,
                SETTINGS_ENABLE_CONNECT_PROTOCOL => settings.enable_connect_protocol = flag(value)?,
                SETTINGS_H3_DATAGRAM => settings.h3_datagram = flag(value)?,
                // RFC 9114 §7.2.4.1: "Setting identifiers that were defined in [HTTP/2]
                // where there is no corresponding HTTP/3 setting have also been reserved.
                // ... their receipt MUST be treated as a connection error of type
                // H3_SETTINGS_ERROR." (0x00 is also reserved from HTTP/2.)
                0x0 | 0x2..=0x5 => return Err(FrameError::Http2Setting(id)),
                // "An implementation MUST ignore any parameter with an identifier it does
                // not understand."
                _ => {}
            }
        }
        Ok(settings)
    }

    /// Writes the payload (not the frame header).
    fn encode_payload(&self, out: &mut BytesMut) {
        let mut put = |id: u64, value: u64| {
            let _ = encode_varint(id, out);
            let _ = encode_varint(value, out);
        };
        put(
            SETTINGS_QPACK_MAX_TABLE_CAPACITY,
            self.qpack_max_table_capacity,
        );
        put(SETTINGS_QPACK_BLOCKED_STREAMS, self.qpack_blocked_streams);
        if let Some(size) = self.max_field_section_size {
            put(SETTINGS_MAX_FIELD_SECTION_SIZE, size);
        }
        if self.enable_connect_protocol {
            put(SETTINGS_ENABLE_CONNECT_PROTOCOL, 1);
        }
        if self.h3_datagram {
            put(SETTINGS_H3_DATAGRAM, 1);
        }
        // RFC 9114 §7.2.4.1: reserved identifiers exercise the "ignore unknown" rule.
        put(0x1f * 7 + 0x21, 0x5054_5448);
    }
}

/// A decoded non-DATA frame.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Frame {
    /// HEADERS: an encoded field section.
    Headers(Bytes),
    /// CANCEL_PUSH with its push ID.
    CancelPush(u64),
    /// SETTINGS.
    Settings(Settings),
    /// PUSH_PROMISE: push ID and encoded field section.
    PushPromise {
        /// The push ID.
        push_id: u64,
        /// The encoded field section.
        block: Bytes,
    },
    /// GOAWAY with a stream ID (from the HTTP server) or push ID (from the HTTP client).
    Goaway(u64),
    /// MAX_PUSH_ID.
    MaxPushId(u64),
    /// ORIGIN (RFC 9412): the raw Origin-Entry list, parsed by the connection with
    /// [`ptth_core::OriginFrame::parse_payload`].
    Origin(Bytes),
}

impl Frame {
    /// The frame type on the wire.
    pub fn ty(&self) -> u64 {
        match self {
            Frame::Headers(_) => HEADERS,
            Frame::CancelPush(_) => CANCEL_PUSH,
            Frame::Settings(_) => SETTINGS,
            Frame::PushPromise { .. } => PUSH_PROMISE,
            Frame::Goaway(_) => GOAWAY,
            Frame::MaxPushId(_) => MAX_PUSH_ID,
            Frame::Origin(_) => ORIGIN,
        }
    }

    /// Appends the frame (header and payload) to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        let mut payload = BytesMut::new();
        match self {
            Frame::Headers(block) | Frame::Origin(block) => payload.extend_from_slice(block),
            Frame::CancelPush(id) | Frame::Goaway(id) | Frame::MaxPushId(id) => {
                let _ = encode_varint(*id, &mut payload);
            }
            Frame::Settings(s) => s.encode_payload(&mut payload),
            Frame::PushPromise { push_id, block } => {
                let _ = encode_varint(*push_id, &mut payload);
                payload.extend_from_slice(block);
            }
        }
        encode_header(self.ty(), payload.len() as u64, out);
        out.extend_from_slice(&payload);
    }
}

/// Appends a frame header (type and length).
pub fn encode_header(ty: u64, len: u64, out: &mut BytesMut) {
    let _ = encode_varint(ty, out);
    let _ = encode_varint(len, out);
}

/// Appends a whole DATA frame.
pub fn encode_data(payload: &[u8], out: &mut BytesMut) {
    encode_header(DATA, payload.len() as u64, out);
    out.extend_from_slice(payload);
}

/// What the decoder produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A complete non-DATA frame.
    Frame(Frame),
    /// Part of a DATA frame's payload (never empty).
    Data(Bytes),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Header,
    Data { remaining: u64 },
    Skip { remaining: u64 },
    Buffer { ty: u64, len: usize },
}

/// Incremental frame decoder for one stream.
///
/// ```text
///            +--------+  DATA len>0   +------+
///   bytes -> | Header | ------------> | Data | -- payload chunks --> Event::Data
///            +--------+ <------------ +------+
///              |   ^ \   unknown/reserved   +------+
///              |   |  `-------------------> | Skip |  (discarded, never buffered)
///              |   |                        +------+
///              v   | whole payload buffered (bounded by max_frame_len)
///            +--------+
///            | Buffer | -> Event::Frame
///            +--------+
/// ```
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    state: State,
    max_frame_len: u64,
}

impl FrameDecoder {
    /// A decoder that refuses non-DATA frames longer than `max_frame_len`.
    pub fn new(max_frame_len: u64) -> Self {
        Self {
            state: State::Header,
            max_frame_len,
        }
    }

    /// Whether the decoder sits at a frame boundary.
    pub fn at_boundary(&self) -> bool {
        self.state == State::Header
    }

    /// Checks that the stream may end here: RFC 9114 §7.1, "if the last frame on the
    /// stream was truncated, this MUST be treated as a connection error of type
    /// H3_FRAME_ERROR".
    pub fn finish(&self, buf: &BytesMut) -> Result<(), FrameError> {
        if self.at_boundary() && buf.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Truncated)
        }
    }

    /// Consumes bytes from `buf` and returns the next event, or `Ok(None)` when more bytes
    /// are needed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Event>, FrameError> {
        loop {
            match self.state {
                State::Header => {
                    let mut cursor = &buf[..];
                    let (ty, len) = match (decode_varint(&mut cursor), decode_varint(&mut cursor)) {
                        (Ok(ty), Ok(len)) => (ty, len),
                        (Err(VarIntError::UnexpectedEnd), _)
                        | (_, Err(VarIntError::UnexpectedEnd)) => return Ok(None),
                        _ => return Err(FrameError::Truncated),
                    };
                    let consumed = buf.len() - cursor.len();
                    buf.advance(consumed);
                    self.state = match ty {
                        DATA if len == 0 => State::Header,
                        DATA => State::Data { remaining: len },
                        // RFC 9114 §7.2.8: HTTP/2-only frame types.
                        0x2 | 0x6 | 0x8 | 0x9 => return Err(FrameError::Http2Frame(ty)),
                        HEADERS | CANCEL_PUSH | SETTINGS | PUSH_PROMISE | GOAWAY | MAX_PUSH_ID
                        | ORIGIN => {
                            if len > self.max_frame_len {
                                return Err(FrameError::TooLarge { ty, len });
                            }
                            // The bound above keeps `len` within memory.
                            State::Buffer {
                                ty,
                                len: usize::try_from(len)
                                    .map_err(|_| FrameError::TooLarge { ty, len })?,
                            }
                        }
                        // RFC 9114 §9: "Implementations MUST ignore unknown or unsupported
                        // values in all extensible protocol elements", reserved types too.
                        _ => State::Skip { remaining: len },
                    };
                }
                State::Data { remaining } => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let n = remaining.min(buf.len() as u64) as usize;
                    let chunk = buf.split_to(n).freeze();
                    let left = remaining - n as u64;
                    self.state = if left == 0 {
                        State::Header
                    } else {
                        State::Data { remaining: left }
                    };
                    return Ok(Some(Event::Data(chunk)));
                }
                State::Skip { remaining } => {
                    if remaining == 0 {
                        self.state = State::Header;
                        continue;
                    }
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let n = remaining.min(buf.len() as u64) as usize;
                    buf.advance(n);
                    self.state = State::Skip {
                        remaining: remaining - n as u64,
                    };
                }
                State::Buffer { ty, len } => {
                    if buf.len() < len {
                        return Ok(None);
                    }
                    let payload = buf.split_to(len).freeze();
                    self.state = State::Header;
                    return parse_payload(ty, payload).map(|f| Some(Event::Frame(f)));
                }
            }
        }
    }
}

/// Parses the payload of a known non-DATA frame. RFC 9114 §7.1: "A frame payload that
/// contains additional bytes after the identified fields or a frame payload that
/// terminates before the end of the identified fields MUST be treated as a connection
/// error of type H3_FRAME_ERROR."
fn parse_payload(ty: u64, mut payload: Bytes) -> Result<Frame, FrameError> {
    let truncated = FrameError::Malformed {
        ty,
        what: "payload ends inside a field",
    };
    let single = |mut p: Bytes| -> Result<u64, FrameError> {
        let v = decode_varint(&mut p).map_err(|_| truncated.clone())?;
        if p.has_remaining() {
            return Err(FrameError::Malformed {
                ty,
                what: "bytes after the last field",
            });
        }
        Ok(v)
    };
    Ok(match ty {
        HEADERS => Frame::Headers(payload),
        ORIGIN => Frame::Origin(payload),
        CANCEL_PUSH => Frame::CancelPush(single(payload)?),
        GOAWAY => Frame::Goaway(single(payload)?),
        MAX_PUSH_ID => Frame::MaxPushId(single(payload)?),
        SETTINGS => Frame::Settings(Settings::decode(&payload)?),
        PUSH_PROMISE => {
            let push_id = decode_varint(&mut payload).map_err(|_| truncated.clone())?;
            Frame::PushPromise {
                push_id,
                block: payload,
            }
        }
        _ => {
            return Err(FrameError::Malformed {
                ty,
                what: "not a buffered frame type",
            })
        }
    })
}

/// Fuzz entry points (used by `fuzz/`; also run by the unit tests on fixed inputs).
#[doc(hidden)]
pub mod fuzz_harness {
    use super::*;

    /// Decodes arbitrary bytes fed in chunks whose sizes come from the input itself; must
    /// never panic, and any frame decoded must re-encode and decode to itself.
    pub fn fuzz_frames(data: &[u8]) {
        let (step, data) = match data.split_first() {
            Some((&s, rest)) => (usize::from(s % 17) + 1, rest),
            None => return,
        };
        let mut decoder = FrameDecoder::new(4096);
        let mut buf = BytesMut::new();
        for chunk in data.chunks(step) {
            buf.extend_from_slice(chunk);
            loop {
                match decoder.decode(&mut buf) {
                    Ok(Some(Event::Frame(frame))) => {
                        if let Frame::Settings(_) = frame {
                            // Our encoder adds a GREASE setting, so compare decoded forms.
                            continue;
                        }
                        let mut out = BytesMut::new();
                        frame.encode(&mut out);
                        let mut again = FrameDecoder::new(u64::MAX);
                        let back = again.decode(&mut out);
                        assert_eq!(back, Ok(Some(Event::Frame(frame))));
                    }
                    Ok(Some(Event::Data(d))) => assert!(!d.is_empty()),
                    Ok(None) => break,
                    Err(e) => {
                        let _ = wire_code(&ProtocolError::Frame(e));
                        return;
                    }
                }
            }
        }
        let _ = decoder.finish(&buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(bytes: &[u8], step: usize) -> Result<Vec<Event>, FrameError> {
        let mut d = FrameDecoder::new(1024);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for chunk in bytes.chunks(step.max(1)) {
            buf.extend_from_slice(chunk);
            while let Some(e) = d.decode(&mut buf)? {
                out.push(e);
            }
        }
        d.finish(&buf)?;
        Ok(out)
    }

    fn data_of(events: &[Event]) -> Vec<u8> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Data(d) => Some(d.to_vec()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    #[test]
    fn every_frame_round_trips_at_every_split() {
        let frames = vec![
            Frame::Headers(Bytes::from_static(b"\x00\x00\xd1")),
            Frame::CancelPush(7),
            Frame::Goaway(1 << 40),
            Frame::MaxPushId(0),
            Frame::PushPromise {
                push_id: 3,
                block: Bytes::from_static(b"xyz"),
            },
        ];
        let mut wire = BytesMut::new();
        for f in &frames {
            f.encode(&mut wire);
        }
        encode_data(b"hello", &mut wire);
        for step in 1..wire.len() {
            let events = decode_all(&wire, step).unwrap();
            let got: Vec<_> = events
                .iter()
                .filter_map(|e| match e {
                    Event::Frame(f) => Some(f.clone()),
                    _ => None,
                })
                .collect();
            assert_eq!(got, frames);
            assert_eq!(data_of(&events), b"hello");
        }
    }

    #[test]
    fn data_is_streamed_not_buffered() {
        let mut d = FrameDecoder::new(16);
        let mut buf = BytesMut::new();
        // A DATA frame far larger than the buffering limit, fed partially.
        encode_header(DATA, 1 << 20, &mut buf);
        buf.extend_from_slice(&[7u8; 100]);
        assert_eq!(
            d.decode(&mut buf).unwrap(),
            Some(Event::Data(Bytes::from(vec![7u8; 100])))
        );
        assert_eq!(d.decode(&mut buf).unwrap(), None);
        assert_eq!(d.finish(&buf), Err(FrameError::Truncated));
    }

    #[test]
    fn settings_round_trip_and_errors() {
        let s = Settings {
            qpack_max_table_capacity: 0,
            max_field_section_size: Some(65536),
            qpack_blocked_streams: 0,
            enable_connect_protocol: true,
            h3_datagram: true,
        };
        let mut wire = BytesMut::new();
        Frame::Settings(s.clone()).encode(&mut wire);
        assert_eq!(
            decode_all(&wire, 3).unwrap(),
            vec![Event::Frame(Frame::Settings(s))]
        );
        for (payload, err) in [
            (&[0x02u8, 0x00][..], FrameError::Http2Setting(2)),
            (&[0x05, 0x00], FrameError::Http2Setting(5)),
            (&[0x06, 0x01, 0x06, 0x02], FrameError::DuplicateSetting(6)),
            (&[0x08, 0x02], FrameError::SettingValue { id: 8, value: 2 }),
            (
                &[0x33],
                FrameError::Malformed {
                    ty: SETTINGS,
                    what: "truncated setting",
                },
            ),
        ] {
            assert_eq!(Settings::decode(payload), Err(err.clone()));
            let expected = match err {
                FrameError::Malformed { .. } => H3_FRAME_ERROR,
                _ => H3_SETTINGS_ERROR,
            };
            assert_eq!(wire_code(&err.into()), expected);
        }
        // Unknown and reserved settings are ignored.
        assert_eq!(
            Settings::decode(&[0x21, 0x05, 0x40, 0xff, 0x01]),
            Ok(Settings::default())
        );
    }

    #[test]
    fn http2_frame_types_are_unexpected_and_unknown_skipped() {
        for ty in [0x2u8, 0x6, 0x8, 0x9] {
            let err = decode_all(&[ty, 0x00], 1).unwrap_err();
            assert_eq!(err, FrameError::Http2Frame(u64::from(ty)));
            assert_eq!(wire_code(&err.into()), H3_FRAME_UNEXPECTED);
        }
        // Reserved 0x21 and unknown 0x0a with payloads, then DATA.
        let wire = [0x21, 0x02, 0xaa, 0xbb, 0x0a, 0x01, 0xcc, 0x00, 0x01, b'x'];
        let events = decode_all(&wire, 1).unwrap();
        assert_eq!(events, vec![Event::Data(Bytes::from_static(b"x"))]);
        assert!(is_reserved(0x21) && is_reserved(0x40) && !is_reserved(0x22));
    }

    #[test]
    fn malformed_payloads() {
        // GOAWAY with a trailing byte, GOAWAY with a truncated varint, oversized HEADERS.
        let err = decode_all(&[0x07, 0x02, 0x00, 0x00], 1).unwrap_err();
        assert_eq!(wire_code(&err.into()), H3_FRAME_ERROR);
        let err = decode_all(&[0x07, 0x01, 0x40], 1).unwrap_err();
        assert_eq!(wire_code(&err.into()), H3_FRAME_ERROR);
        let mut big = BytesMut::new();
        encode_header(HEADERS, 5000, &mut big);
        let err = decode_all(&big, 64).unwrap_err();
        assert_eq!(wire_code(&err.into()), H3_EXCESSIVE_LOAD);
        // A stream that ends inside a frame header.
        assert_eq!(decode_all(&[0x01], 1), Err(FrameError::Truncated));
    }

    #[test]
    fn fuzz_harness_on_fixed_inputs() {
        fuzz_harness::fuzz_frames(&[]);
        fuzz_harness::fuzz_frames(&[3, 0x07, 0x01, 0x05, 0x00, 0x03, b'a', b'b', b'c']);
        fuzz_harness::fuzz_frames(&[0, 0x04, 0x04, 0x06, 0x01, 0x08, 0x01]);
        let mut x: u32 = 0x1234_5678;
        for len in 0..400 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    (x % 16) as u8
                })
                .collect();
            fuzz_harness::fuzz_frames(&bytes);
        }
    }
}
