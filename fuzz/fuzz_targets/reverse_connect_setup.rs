//! Reverse-connect setups (connect-listen, connect-accept): gateway validators, templates and default paths.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ptth_core::fuzz_harness::fuzz_reverse_setup(data));
