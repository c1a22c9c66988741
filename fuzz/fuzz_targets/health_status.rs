#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sessionlb::fuzzing::health_status(data));
