//! HTTP/3 for PTTH on quinn, with roles taken from the mechanism rather than from who is the QUIC client.
//!
//! This crate is reserved for the HTTP/3 issue (Potato `rh3`, draft-bt `h3-reverse`, PTTH
//! `OPTIONS` and extended CONNECT over HTTP/3). It deliberately exports nothing yet: no
//! function here pretends to speak HTTP/3 before that work lands.
#![forbid(unsafe_code)]

pub mod qpack;
