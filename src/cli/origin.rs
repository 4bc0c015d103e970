//! `shardpool origin` (scaffolding: replaced by the layer that owns it).

use super::CliResult;

/// Arguments of `shardpool origin`.
#[derive(clap::Args, Debug)]
pub struct OriginArgs {}

pub fn run(_args: OriginArgs) -> CliResult {
    Err("`shardpool origin` is not built yet".into())
}
