//! An origin's answer to the gateway's authorisation request (status and ptth-* fields).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ptth_auth::fuzz_harness::fuzz_authorize_claim(data));
