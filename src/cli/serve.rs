//! `shardpool serve` (scaffolding: replaced by the layer that owns it).

use super::CliResult;

/// Arguments of `shardpool serve`.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {}

pub fn run(_args: ServeArgs) -> CliResult {
    Err("`shardpool serve` is not built yet".into())
}
