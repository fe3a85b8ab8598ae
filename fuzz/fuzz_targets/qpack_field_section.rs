//! QPACK-encoded HTTP/3 field sections, and the request, response and trailer checks on them.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ptth_h3::qpack::fuzz_harness::fuzz_qpack(data));
