//! An origin's signed answer to the authorisation challenge (status and ptth-* fields).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ptth_auth::fuzz_harness::fuzz_challenge_answer(data));
