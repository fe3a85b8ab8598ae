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
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod body;
pub mod reversed;
pub mod setup;

pub use body::{Body, BoxError};
pub use setup::{origin_upgrade, SetupFailure};
