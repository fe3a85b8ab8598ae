//! PTTH over HTTP/1.1: the Upgrade and legacy PTTH/1.0 setups, and reversed HTTP/1.1 on any IO.
//!
//! This crate does not decide *whether* a setup is acceptable: the rules live in `ptth-core`
//! (`setup::validate_*`) and the credentials in `ptth-auth`. It moves bytes: it sends the
//! origin's setup request and hands back the upgraded stream (with any bytes that arrived
//! together with the `101` replayed first, as hyper's `Upgraded` guarantees), and it runs
//! HTTP/1.1 in the reversed roles over any `AsyncRead + AsyncWrite`:
//!
//! ```text
//! origin:  dial ─▶ TLS ─▶ setup::origin_upgrade ─▶ reversed::serve (HTTP/1.1 server)
//! gateway: accept ─▶ TLS ─▶ hyper server answers 101 ─▶ reversed::handshake (HTTP/1.1 client)
//! ```
//!
//! What it does not do: no sockets, no TLS, no setup validation, no pooling (HTTP/1.1 carries
//! one request at a time; an origin keeps several connections for concurrency).
//!
//! # Example
//!
//! The reversal on its own over an in-memory pipe: the origin holds the end it "dialled" and
//! serves; the gateway sends a request. `examples/h1_duplex.rs` adds the Upgrade setup before it.
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use hyper_util::rt::TokioIo;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let (origin_io, gateway_io) = tokio::io::duplex(64 * 1024);
//! let app = hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
//!     let answer = format!("hello from {}", req.uri().path());
//!     Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(answer))))
//! });
//! tokio::spawn(ptth_h1::reversed::serve(origin_io, app));
//!
//! let (mut sender, conn) = ptth_h1::reversed::handshake(gateway_io).await?;
//! tokio::spawn(conn);
//! let empty: ptth_h1::Body = http_body_util::Empty::new().map_err(|n| match n {}).boxed_unsync();
//! let request = http::Request::get("/hi").header("host", "app.example").body(empty)?;
//! let response = sender.send_request(request).await?;
//! let body = response.into_body().collect().await?.to_bytes();
//! assert_eq!(&body[..], b"hello from /hi");
//! # Ok(()) }
//! ```
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![warn(missing_docs)]

mod body;
pub mod reversed;
pub mod setup;

pub use body::{Body, BoxError};
pub use setup::{origin_upgrade, SetupFailure};
