//! `shardpool bench` (scaffolding: replaced by the layer that owns it).

use super::CliResult;

/// Arguments of `shardpool bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {}

pub fn run(_args: BenchArgs) -> CliResult {
    Err("`shardpool bench` is not built yet".into())
}
