//! The `shardpool` binary: serve, origin, bench and compare subcommands.

mod cli;

/// mimalloc instead of the system allocator: the server allocates and frees a few small blocks per
/// call (hyper/h2 stream state, header maps, the reply), and glibc's malloc costs noticeably more
/// CPU per request (docs/benchmarks.md, "Server"). Only the binary sets this; the library does not.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
