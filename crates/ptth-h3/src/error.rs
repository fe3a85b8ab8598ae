//! The public error type of the HTTP/3 layer: who raised it, with which wire code, and
//! whether the request may be retried elsewhere.

use crate::frame::{H3_NO_ERROR, H3_REQUEST_REJECTED};

/// Which endpoint raised an error: the one that sent the error code on the wire.
///
/// `Local` errors with a protocol code are usually the peer's fault: this endpoint saw the
/// peer break a rule and closed the connection or reset the stream with that code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Culprit {
    /// This endpoint raised it (or our own body or handler failed).
    Local,
    /// The peer raised it (it closed the connection or reset the stream with the code).
    Peer,
}

/// A boxed error, as carried by request and response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why an HTTP/3 operation failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum H3Error {
    /// The connection was closed with an HTTP/3 application error code.
    #[error("HTTP/3 connection closed by {raised_by:?} with code {code:#x}: {reason}")]
    Connection {
        /// Who sent the code.
        raised_by: Culprit,
        /// The application error code (RFC 9114 §8.1, RFC 9204 §6, RFC 9297 §5).
        code: u64,
        /// A human-readable reason.
        reason: String,
    },
    /// The request stream was reset or stopped with an HTTP/3 error code.
    #[error("HTTP/3 stream error raised by {raised_by:?} with code {code:#x}: {reason}")]
    Stream {
        /// Who sent the code.
        raised_by: Culprit,
        /// The error code.
        code: u64,
        /// A human-readable reason.
        reason: String,
    },
    /// The QUIC connection failed below HTTP/3 (timeout, transport error, reset).
    #[error("QUIC transport failure: {reason}")]
    Transport {
        /// What quinn reported.
        reason: String,
    },
    /// A GOAWAY was sent or received, so no new request may start on this connection.
    /// The request was not sent and may be retried on another connection.
    #[error("connection is going away; request not sent")]
    GoingAway,
    /// This endpoint may not send requests under the configured request direction.
    #[error("this endpoint does not send requests in this request direction")]
    WrongDirection,
    /// A feature the peer or local configuration did not enable (extended CONNECT,
    /// datagrams, datagrams on a stream the mapping cannot express).
    #[error("not negotiated: {0}")]
    NotNegotiated(&'static str),
    /// A header section exceeds the peer's SETTINGS_MAX_FIELD_SECTION_SIZE.
    #[error("header section of {size} bytes exceeds the peer's limit of {limit}")]
    HeadersTooLarge {
        /// The RFC 9114 §4.2.2 size of the section.
        size: u64,
        /// The peer's limit.
        limit: u64,
    },
    /// A local body (request or response) produced an error.
    #[error("local body error: {0}")]
    Body(String),
}

impl H3Error {
    /// The wire code, if this error carries one.
    pub fn code(&self) -> Option<u64> {
        match self {
            H3Error::Connection { code, .. } | H3Error::Stream { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Who raised it, if it was raised on the wire.
    pub fn raised_by(&self) -> Option<Culprit> {
        match self {
            H3Error::Connection { raised_by, .. } | H3Error::Stream { raised_by, .. } => {
                Some(*raised_by)
            }
            _ => None,
        }
    }

    /// Whether the request was certainly not processed and may be retried on another
    /// connection: RFC 9114 §4.1.1, "H3_REQUEST_REJECTED ... indicates to the client
    /// that the request was not processed", and requests refused after GOAWAY (§5.2).
    pub fn is_retryable(&self) -> bool {
        match self {
            H3Error::GoingAway => true,
            H3Error::Stream {
                raised_by: Culprit::Peer,
                code,
                ..
            } => *code == H3_REQUEST_REJECTED,
            _ => false,
        }
    }

    /// Whether the connection ended cleanly (H3_NO_ERROR).
    pub fn is_no_error(&self) -> bool {
        matches!(self, H3Error::Connection { code, .. } if *code == H3_NO_ERROR)
    }
}
