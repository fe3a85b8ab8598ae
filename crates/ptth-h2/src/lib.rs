//! PTTH over HTTP/2: reversed HTTP/2 on any IO, the PTTH extended CONNECT setup, ORIGIN frames.
//!
//! This crate does not decide whether a setup is acceptable (that is `ptth-core`) nor who the
//! origin is (`ptth-auth`). It runs HTTP/2 in the reversed roles over any
//! `AsyncRead + AsyncWrite`, sends the origin's RFC 8441 extended CONNECT and hands back the
//! stream's bytes, and injects or reads the draft-bt ORIGIN frame at the byte level because
//! hyper and h2 do not expose it.
//!
//! ```text
//! origin:  dial ─▶ TLS ─▶ [connect::origin_connect] ─▶ server::serve (h2's HTTP/2 server)
//! gateway: accept ─▶ TLS ─▶ [server::serve answers 2xx] ─▶ client::handshake (h2's HTTP/2 client)
//!            client::drive (the connection, keep-alive PING) ◀─┘   └─▶ client::Client::send
//! ```
//!
//! The gateway's client ([`client`]) is h2's client used directly: requests are sent from
//! the caller's future, with no request channel and no task per request, so an idle
//! connection costs only h2's own state. The origin's reverse CONNECT service channel uses
//! the same client (in the ordinary roles, on its own TLS connection), so each flow's stream
//! is a [`Tunnel`] that [`flow::splice`] moves without copying a byte
//! ([`flow::FlowStream::H2`]). `reversed::handshake` and `reversed::drive` (hyper's
//! HTTP/2 client) remain for the origin's side of the extended CONNECT setup
//! (`connect::origin_connect`).
//!
//! The gateway's side of the extended CONNECT setup (and of reverse CONNECT's
//! `connect-listen` / `connect-accept`) and the origin's reversed HTTP/2 are [`server`],
//! h2's server used directly: requests run in the connection's driver, and the stream of a
//! CONNECT answered 2xx is handed over as a [`Tunnel`] on h2's own stream halves
//! ([`server::on_tunnel`]), without the task per stream and the write channel of hyper's
//! server upgrade. The driver writes what one turn of it produced in one go (the answers to
//! every request it read together), where h2 alone flushes each DATA frame longer than 256
//! octets on its own. The gateway's public HTTP/2
//! listeners run on it too, with their own [`server::Options`].
//! `examples/h2_duplex.rs` shows the same setup with hyper's server on the gateway's end,
//! which works as well. [`reversed::serve`] (hyper's HTTP/2 server with the reversed
//! connection's settings) remains for tests and for embedders who want hyper's service
//! types; the origin serves with [`server`].
//!
//! What it does not do: no sockets, no TLS, no setup validation, no routing.
//!
//! # Example
//!
//! The reversal on its own over an in-memory pipe: the origin holds the end it "dialled" and
//! serves HTTP/2; the gateway sends the client preface and a request with h2's client.
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use ptth_h2::client::{drive, handshake, KEEP_ALIVE};
//! use ptth_h2::reversed::serve;
//! use ptth_h2::{ServeOptions, Windows};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let (origin_io, gateway_io) = tokio::io::duplex(64 * 1024);
//! let app = hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
//!     let answer = format!("hello from {}", req.uri().path());
//!     Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(answer))))
//! });
//! tokio::spawn(serve(origin_io, app, ServeOptions::default()));
//!
//! let (client, conn) = handshake(gateway_io, Windows::default()).await?;
//! tokio::spawn(drive(conn, KEEP_ALIVE));
//! let empty: ptth_h2::Body = http_body_util::Empty::new().map_err(|n| match n {}).boxed_unsync();
//! let request = http::Request::get("https://app.example/hi").body(empty)?;
//! let response = client.send(request).await.map_err(|e| e.to_string())?;
//! let body = response.into_body().collect().await?.to_bytes();
//! assert_eq!(&body[..], b"hello from /hi");
//! # Ok(()) }
//! ```
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![warn(missing_docs)]

pub mod client;
pub mod connect;
pub mod flow;
pub mod linger;
pub mod reversed;
pub mod server;
pub mod tunnel;
pub mod udp_flow;

pub use connect::{origin_connect, ConnectFailure, ConnectStream};
pub use reversed::{Body, BoxError, PeerSettings, ServeOptions, Windows, MAX_HEADER_LIST_SIZE};
pub use tunnel::Tunnel;

mod batch;
mod date;
mod keep_alive;
mod message;
mod origin_frame;
#[doc(hidden)]
pub use origin_frame::fuzz_harness;
pub use origin_frame::{
    FrameHeader, OriginEntry, OriginFrame, OriginFrameError, OriginFrameExt, OriginFrameInjector,
    OriginFrameTap, OriginFrameWatch,
};
