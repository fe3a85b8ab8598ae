//! Grants TOML documents, and the grants they load presented with the input as a credential.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ptth_auth::fuzz_harness::fuzz_grants_toml(data));
