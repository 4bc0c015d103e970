//! `shardpool origin`: a backend speaking the framed greeting protocol (docs/gateway.md).

use super::CliResult;
use super::parse;
use shardpool::upstream::origin::{Origin, OriginConfig};
use std::net::SocketAddr;
use std::time::Duration;

/// Arguments of `shardpool origin`.
#[derive(clap::Args, Debug)]
pub struct OriginArgs {
    /// Address to listen on.
    /// (`IP:PORT`, or a bare `PORT` on 127.0.0.1, as every address of the binary.)
    #[arg(
        long,
        env = "SHARDPOOL_ORIGIN_LISTEN",
        default_value = "127.0.0.1:7001",
        value_parser = parse::addr
    )]
    listen: SocketAddr,
    /// Name of this origin in logs.
    #[arg(long, env = "SHARDPOOL_ORIGIN_ID", default_value = "origin")]
    id: String,
    /// Delay before every answer, e.g. `5ms` (simulates a slow or stalled backend).
    #[arg(long, env = "SHARDPOOL_ORIGIN_DELAY", default_value = "0s",
          value_parser = parse::duration)]
    delay: Duration,
    /// Shards (executor threads).
    #[arg(long, env = "SHARDPOOL_ORIGIN_SHARDS", default_value_t = 1,
          value_parser = parse::count::<usize>)]
    shards: usize,
    /// Pin each shard to a CPU, as `serve --pin`; bare `--pin` means true.
    #[arg(long, env = "SHARDPOOL_ORIGIN_PIN", num_args = 0..=1, default_value = "false",
          default_missing_value = "true", value_parser = parse::bool,
          action = clap::ArgAction::Set)]
    pin: bool,
    /// Close connections that bring no request for this long, e.g. `5s`, or `off` (a
    /// keep-alive timeout; pooled clients then meet stale connections).
    #[arg(long, env = "SHARDPOOL_ORIGIN_IDLE_TIMEOUT", default_value = "off", value_parser = parse::opt_duration)]
    idle_timeout: OffOrDuration,
    /// Deliberately share the port with another origin of the same user already listening on
    /// it (the kernel splits connections between them); without it a port in use is an error.
    /// Bare `--reuse-port-shared` means true, as in `serve`.
    #[arg(long, env = "SHARDPOOL_ORIGIN_REUSE_PORT_SHARED", num_args = 0..=1,
          default_value = "false", default_missing_value = "true", value_parser = parse::bool,
          action = clap::ArgAction::Set)]
    reuse_port_shared: bool,
}

/// A duration that may be `off` (an alias, so clap takes the whole `Option` from the parser).
type OffOrDuration = Option<Duration>;

/// Runs the origin until SIGINT/SIGTERM.
pub fn run(args: OriginArgs) -> CliResult {
    if args.shards == 0 {
        return Err("--shards must be at least 1".into());
    }
    let origin = Origin::start(OriginConfig {
        listen: args.listen,
        id: args.id.clone(),
        delay: args.delay,
        shards: args.shards,
        pin: args.pin,
        idle_timeout: args.idle_timeout,
        reuse_port_shared: args.reuse_port_shared,
    })
    .map_err(|e| format!("cannot start the origin: {e}"))?;
    println!(
        "shardpool: origin {} listening on {}",
        args.id,
        origin.local_addr()
    );
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let switch = origin.shutdown_switch();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if signals.forever().next().is_some() {
                switch.abort();
            }
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    origin.wait();
    Ok(())
}
