//! The `shardpool` binary: serve, origin, bench and compare subcommands.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
