//! The `shardpool` binary: serve, origin, bench and compare subcommands.

mod cli;

/// mimalloc instead of the system allocator: the server allocates and frees a few small blocks per
/// call (hyper/h2 stream state, header maps, the reply), and glibc's malloc costs noticeably more
/// CPU per request (docs/benchmarks.md, "Server"). Only the binary sets this; the library does not.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

// The one function of mimalloc's extended API the binary needs; it is in the static library the
// `mimalloc` crate links (its `extended` feature would pull in another crate just for this).
unsafe extern "C" {
    /// Frees the calling thread's unused pages (and, with `force`, abandoned ones) back to the
    /// system.
    fn mi_collect(force: bool);
}

/// Gives the memory the calling thread freed back to the system: run on a shard's thread after
/// a connection storm (`Server::after_storm`), when thousands of connections' buffers were just
/// freed there.
pub(crate) fn release_free_memory() {
    // SAFETY: mi_collect takes no pointers and may be called from any thread at any time; it
    // only returns free pages of mimalloc's own heaps to the OS.
    unsafe { mi_collect(true) };
}

fn main() -> std::process::ExitCode {
    cli::main()
}
