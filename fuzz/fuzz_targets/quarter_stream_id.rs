//! QUIC varints and quarter stream IDs under every stream-ID mapping.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ptth_core::fuzz_harness::fuzz_qsid(data));
