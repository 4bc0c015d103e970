//! Command-line front end. Each subcommand lives in its own module and owns its arguments.

use clap::{CommandFactory, Parser, Subcommand};
use std::process::ExitCode;

mod bench;
mod compare;
mod origin;
mod parse;
mod serve;
mod settings;
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
    #[command(after_help = parse::SPELLINGS)]
    Serve(serve::ServeArgs),
    /// Run an origin backend speaking the framed greeting protocol.
    #[command(after_help = parse::SPELLINGS)]
    Origin(origin::OriginArgs),
    /// Load-test a gRPC Greeter server.
    #[command(after_help = parse::SPELLINGS)]
    Bench(bench::BenchArgs),
    /// Start server variants and compare them under the same load (A/B/A/B).
    #[command(after_help = parse::SPELLINGS)]
    Compare(compare::CompareArgs),
}

/// An error for the user: what went wrong and, where possible, how to fix it.
pub type CliResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// The commit this binary was built from (cli/build.rs), for the provenance of reports;
/// "unknown" when these modules are built without that script (the fuzz targets include them).
pub const COMMIT: &str = match option_env!("SHARDPOOL_COMMIT") {
    Some(commit) => commit,
    None => "unknown",
};

/// Writes `text` to stdout. A reader that went away (`shardpool bench | head -3`: EPIPE) or any
/// other write error only ends the output: the run goes on to write its files and to exit with
/// its own status, where `print!` would panic.
pub fn out(text: &str) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush());
}

pub fn main() -> ExitCode {
    let args = parse::negative_values_as_values(&Cli::command(), std::env::args_os().collect());
    let cli = Cli::parse_from(args);
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
