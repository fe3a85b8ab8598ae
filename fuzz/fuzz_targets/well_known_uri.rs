//! Well-known PTTH paths, URI templates and serialized origins.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ptth_core::fuzz_harness::fuzz_well_known(data));
