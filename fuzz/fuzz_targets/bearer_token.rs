//! Authorization header values presented to the bearer-token verifier.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ptth_auth::fuzz_harness::fuzz_bearer_token(data));
