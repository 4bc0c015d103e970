//! Fuzz target `grpc_unary`: see `shardpool::fuzzing::grpc_unary` for the contract it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shardpool::fuzzing::grpc_unary(data));
