//! Setup requests (Upgrade, extended CONNECT, OPTIONS, PTTH/1.0) through every gateway validator.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ptth_core::fuzz_harness::fuzz_setup_request(data));
