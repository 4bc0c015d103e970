//! Command-line front end. Each subcommand lives in its own module and owns its arguments.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod bench;
mod compare;
mod origin;
mod serve;
mod upstream_args;

#[cfg(any(test, fuzzing))]
pub mod fuzzing;

/// A lock-free, per-core sharded connection pool: server, origin backend and benchmark harness.
#[derive(Parser, Debug)]
#[command(name = "shardpool", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the gRPC Greeter on every core (thread-per-core, glommio).
    Serve(serve::ServeArgs),
    /// Run an origin backend speaking the framed greeting protocol.
    Origin(origin::OriginArgs),
    /// Load-test a gRPC Greeter server.
    Bench(bench::BenchArgs),
    /// Start server variants and compare them under the same load (A/B/A/B).
    Compare(compare::CompareArgs),
}

/// An error for the user: what went wrong and, where possible, how to fix it.
pub type CliResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Origin(args) => origin::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Compare(args) => compare::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("shardpool: error: {err}");
            ExitCode::FAILURE
        }
    }
}
