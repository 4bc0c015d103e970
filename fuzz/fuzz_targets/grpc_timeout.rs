//! Fuzz target `grpc_timeout`: see `shardpool::fuzzing::grpc_timeout` for the contract it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shardpool::fuzzing::grpc_timeout(data));
