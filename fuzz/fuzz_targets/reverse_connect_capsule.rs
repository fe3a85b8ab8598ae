//! Reverse-connect control capsules (AVAILABLE_SERVICES, CONNECTION_REQUEST, CONNECTION_REQUEST_DECLINED) and both ends' channel state machines.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ptth_core::fuzz_harness::fuzz_reverse_connect_capsule(data));
