//! HTTP/2 ORIGIN frame payloads, frame headers and the tap's frame scanner.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ptth_h2::fuzz_harness::fuzz_origin_frame(data));
