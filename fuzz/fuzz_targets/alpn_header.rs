//! ALPN header field lines (RFC 7639 encoding) as peers send them in setup requests and responses.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ptth_core::fuzz_harness::fuzz_alpn(data));
