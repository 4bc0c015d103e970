//! Fuzz target `origin_frames`: see `shardpool::fuzzing::origin_frames` for the contract it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shardpool::fuzzing::origin_frames(data));
