//! PTTH over HTTP/2: reversed HTTP/2 on any IO, the PTTH extended CONNECT setup, ORIGIN frames.
//!
//! This crate does not decide whether a setup is acceptable (that is `ptth-core`) nor who the
//! origin is (`ptth-auth`). It runs HTTP/2 in the reversed roles over any
//! `AsyncRead + AsyncWrite`, sends the origin's RFC 8441 extended CONNECT and hands back the
//! stream's bytes, and injects or reads the draft-bt ORIGIN frame at the byte level because
//! hyper and h2 do not expose it.
//!
//! ```text
//! origin:  dial ─▶ TLS ─▶ [connect::origin_connect] ─▶ reversed::serve (HTTP/2 server)
//! gateway: accept ─▶ TLS ─▶ [hyper server answers 2xx] ─▶ reversed::handshake (HTTP/2 client)
//! ```
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod connect;
pub mod reversed;

pub use connect::{origin_connect, ConnectFailure, ConnectStream};
pub use reversed::{Body, BoxError, PeerSettings, ServeOptions, Windows, MAX_HEADER_LIST_SIZE};

mod origin_frame;
#[doc(hidden)]
pub use origin_frame::fuzz_harness;
pub use origin_frame::{
    FrameHeader, OriginEntry, OriginFrame, OriginFrameError, OriginFrameExt, OriginFrameInjector,
    OriginFrameTap, OriginFrameWatch,
};
