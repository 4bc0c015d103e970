//! `shardpool compare` (scaffolding: replaced by the layer that owns it).

use super::CliResult;

/// Arguments of `shardpool compare`.
#[derive(clap::Args, Debug)]
pub struct CompareArgs {}

pub fn run(_args: CompareArgs) -> CliResult {
    Err("`shardpool compare` is not built yet".into())
}
