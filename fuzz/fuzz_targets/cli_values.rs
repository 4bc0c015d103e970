//! Fuzz target `cli_values`: see `cli::fuzzing::cli_values` (cli/src/cli/fuzzing.rs) for the contract it checks.
#![no_main]

// The binary's CLI is not a library: include its source, as cli/src/main.rs does.
#[path = "../../cli/src/cli/mod.rs"]
#[allow(dead_code, unused_imports)]
mod cli;

/// The binary's allocator hook (cli/src/main.rs); fuzzing never starts a server.
fn release_free_memory() {}

libfuzzer_sys::fuzz_target!(|data: &[u8]| cli::fuzzing::cli_values(data));
