//! HTTP/3 frames fed to the frame decoder in chunks of input-chosen size.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ptth_h3::frame::fuzz_harness::fuzz_frames(data));
