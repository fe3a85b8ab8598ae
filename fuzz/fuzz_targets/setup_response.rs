//! Gateway answers to setups (101 Upgrade, extended CONNECT 2xx, OPTIONS, PTTH/1.0) through every origin validator.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ptth_core::fuzz_harness::fuzz_setup_response(data));
