//! RFC 9297 capsule streams: the bounded decoder (one buffer, and received frames in random splits), DATA/FINAL_DATA streaming and RFC 9298 UDP payloads.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ptth_core::fuzz_harness::fuzz_capsules(data));
