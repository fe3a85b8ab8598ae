//! HTTP/3 for PTTH on quinn, with roles taken from the mechanism rather than from who is the QUIC client.
//!
//! # What it does
//!
//! - Speaks HTTP/3 (RFC 9114) over an established `quinn::Connection` in any
//!   [`RequestDirection`]: forward (the QUIC client sends requests on streams 0, 4, 8),
//!   reversed (Potato `rh3`, draft-bt `h3-reverse`: the QUIC *server* sends requests on
//!   streams 1, 5, 9) and two-direction (PTTH -00 `OPTIONS`: both do).
//! - Both roles on one type: [`SendRequest`] for the HTTP client, [`H3Connection::accept`]
//!   / [`ResponseSender`] / [`serve`] for the HTTP server; bodies are `http_body::Body`
//!   with trailers.
//! - Extended CONNECT (RFC 9220) with the stream as a byte stream ([`H3Stream`]).
//! - GOAWAY and graceful shutdown (RFC 9114 §5.2) with the ID parity of the request
//!   direction; HTTP datagrams (RFC 9297) with the quarter-stream-ID mapping of the
//!   direction ([`ptth_core::QsidMapping`]).
//! - QPACK with a dynamic table capacity of 0 ([`qpack`]).
//!
//! # What it does not do
//!
//! - No QUIC: it does not bind sockets, configure TLS or pick ALPN; the caller hands it a
//!   connection and says (from the mechanism) who sends requests.
//! - No server push (we never send MAX_PUSH_ID), no QPACK dynamic table, no PRIORITY_UPDATE
//!   handling (ignored as an unknown frame), no WebTransport.
//! - No PTTH setup logic (OPTIONS, extended CONNECT `ptth`): that lives above, in the
//!   gateway and origin, on top of this crate's requests.
//!
//! # Data flow
//!
//! ```text
//!  http::Request<B> ──SendRequest──▶ qpack::encode ─▶ HEADERS ┐
//!        body frames ───────────────────────────────▶ DATA*    ├─▶ quinn bidi stream
//!        trailers ─────────────────▶ qpack::encode ─▶ HEADERS ┘    (ID parity from the
//!                                                                   request direction)
//!  quinn bidi stream ─▶ frame::FrameDecoder ─▶ HEADERS ─▶ qpack::decode ─▶ http::Response
//!                                           └▶ DATA ─▶ RecvBody (http_body::Body)
//!  control stream: SETTINGS, GOAWAY   QPACK streams: checked, capacity 0
//!  QUIC datagrams ─▶ QsidMapping::read ─▶ RequestHandle::recv_datagram
//! ```
//!
//! # Example
//!
//! ```no_run
//! use ptth_h3::{H3Config, H3Connection, RequestDirection};
//!
//! # async fn gateway(quic: quinn::Connection) -> Result<(), ptth_h3::H3Error> {
//! // The gateway is the QUIC server of an `rh3` connection, and the HTTP client.
//! let direction = RequestDirection::for_mechanism(ptth_core::Mechanism::Rh3).unwrap();
//! let conn = H3Connection::new(quic, H3Config::new(direction)).await?;
//! let request = http::Request::get("https://origin.example/").body(http_body_util::Empty::<bytes::Bytes>::new()).unwrap();
//! let response = conn.sender().send_request(request).await?;
//! assert_eq!(response.extensions().get::<ptth_h3::RequestHandle>().unwrap().stream_id().into_inner(), 1);
//! conn.graceful_shutdown().await;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
// Peer bytes never panic: no unwrap or expect outside tests (an invariant that cannot fail
// says so with an allow and its reason).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![warn(missing_docs)]

pub mod qpack;

mod connection;
mod datagrams;
mod error;
pub mod frame;
mod qpack_streams;
pub mod transport;

pub use connection::{
    serve, H3Config, H3Connection, H3Stream, Protocol, RecvBody, RequestDirection, RequestHandle,
    ResponseSender, SendRequest,
};
pub use datagrams::ByteStream;
pub use error::{BoxError, Culprit, H3Error};
#[doc(hidden)]
pub use frame::fuzz_harness;
pub use frame::Settings;

#[cfg(test)]
mod tests;
