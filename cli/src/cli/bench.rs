//! `shardpool bench`: load-test any gRPC Greeter server and print a table (plus optional JSON
//! and an SVG latency plot).

use super::CliResult;
use super::parse;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use shardpool::bench::{self, BenchConfig, Load, Phase, Progress, Report, RunInfo, Series, Stop};
use shardpool::server::limits;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Arguments of `shardpool bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Server address: HOST:PORT, or just a port on 127.0.0.1.
    #[arg(long, short = 't', default_value = "127.0.0.1:50051")]
    pub target: String,
    /// The load (shared with `compare`).
    #[command(flatten)]
    pub load: Box<LoadArgs>,
    /// Length of the measured phase, e.g. 10s, 500ms, 2m [default: 10s].
    #[arg(long, short = 'd', value_parser = parse::duration, conflicts_with = "requests")]
    pub duration: Option<Duration>,
    /// Stop after this many measured requests instead of after a duration.
    #[arg(long, short = 'n', value_parser = parse::count::<u64>)]
    pub requests: Option<u64>,
    /// Unrecorded load before the measured phase.
    #[arg(long, default_value = "2s", value_parser = parse::duration)]
    pub warmup: Duration,
    /// Exit with an error when more than this fraction of the measured calls failed (0.01 or
    /// 1%); 0 means any failed call fails the run. A run where no call completed always fails.
    #[arg(long, default_value = "0", value_parser = parse::fraction)]
    pub max_error_rate: f64,
    /// Client-side settings.
    #[command(flatten)]
    pub client: Box<ClientArgs>,
    /// Where the results go.
    #[command(flatten)]
    pub output: Box<OutputArgs>,
}

/// The load flags `bench` and `compare` share (same names, spellings and meaning in both).
#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    /// TCP connections in total (spread over the client threads); refused beyond the
    /// descriptor limit.
    #[arg(long, short = 'c', default_value_t = 16, value_parser = parse::count::<usize>)]
    pub connections: usize,
    /// Concurrent streams (requests in flight) per connection.
    #[arg(long, short = 'm', default_value_t = 8, value_parser = parse::count::<usize>)]
    pub streams: usize,
    /// Open loop: total requests per second, latency corrected for coordinated omission.
    /// Without it the load is a closed loop (connections x streams always in flight).
    #[arg(long, value_parser = parse::rate)]
    pub rate: Option<f64>,
    /// Client threads (shards); 0 = one per CPU (never more than --connections).
    #[arg(long, default_value_t = 0, value_parser = parse::count::<usize>)]
    pub threads: usize,
    /// CPUs to pin the client threads to, e.g. 2,3 [default: all].
    #[arg(long, alias = "client-cpus", value_delimiter = ',', value_parser = parse::count::<usize>)]
    pub cpus: Vec<usize>,
    /// Pin each client thread to a CPU, as `serve --pin`; `--pin false` does not (the old
    /// `--no-pin` still works); bare `--pin` means true.
    #[arg(long, num_args = 0..=1, default_value = "true", default_missing_value = "true",
          value_parser = parse::bool, action = clap::ArgAction::Set)]
    pub pin: bool,
    /// The old spelling of `--pin false`.
    #[arg(long, hide = true, conflicts_with = "pin")]
    pub no_pin: bool,
}

impl LoadArgs {
    /// `config` with this load (closed loop unless `--rate`).
    pub fn apply(&self, config: BenchConfig) -> BenchConfig {
        let mut config = config
            .connections(self.connections)
            .streams(self.streams)
            .load(match self.rate {
                Some(rate) => Load::Open { rate },
                None => Load::Closed,
            })
            .threads(self.threads)
            .pin(self.pin && !self.no_pin);
        config.cpus = self.cpus.clone();
        config
    }
}

/// Client-side settings of `shardpool bench` (boxed: keeps the subcommand enum small).
#[derive(clap::Args, Debug, Clone)]
pub struct ClientArgs {
    /// A call without a response after this long fails as DEADLINE_EXCEEDED.
    #[arg(long, default_value = "10s", value_parser = parse::duration)]
    pub timeout: Duration,
    /// The `name` sent in each HelloRequest.
    #[arg(long, default_value = "shardpool")]
    pub name: String,
    /// The :authority header [default: the target].
    #[arg(long)]
    pub authority: Option<String>,
    /// Do not read shardpool.v1.Admin/PoolMetrics before and after the run.
    #[arg(long)]
    pub no_pool_metrics: bool,
}

/// Output settings of `shardpool bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct OutputArgs {
    /// Write every figure, with the commit, date, machine and command line, as JSON to this file
    /// (its directory must exist).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write an SVG latency-percentile plot to this file (its directory must exist).
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

impl BenchArgs {
    /// The library configuration these flags describe (validated; errors name the flag).
    pub fn config(&self) -> Result<BenchConfig, String> {
        let target = parse::target(&self.target).map_err(|e| format!("--target: {e}"))?;
        let stop = match (self.requests, self.duration) {
            (Some(n), _) => Stop::Requests(n),
            (None, Some(d)) => Stop::Duration(d),
            (None, None) => Stop::Duration(Duration::from_secs(10)),
        };
        let mut config = self
            .load
            .apply(BenchConfig::new(target))
            .stop(stop)
            .warmup(self.warmup)
            .timeout(self.client.timeout)
            .pool_metrics(!self.client.no_pool_metrics);
        config.name = self.client.name.clone();
        if let Some(authority) = &self.client.authority {
            config.authority = authority.clone();
        }
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }
}

/// A progress bar on stderr (hidden when stderr is not a terminal or with `--quiet`).
pub struct ProgressDisplay {
    bar: ProgressBar,
    stop: Stop,
    warmup: Duration,
}

impl ProgressDisplay {
    /// A bar for a run of `config`, drawn unless `quiet`.
    pub fn new(config: &BenchConfig, quiet: bool) -> Self {
        let target = if quiet {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        let bar = ProgressBar::with_draw_target(Some(0), target);
        bar.set_style(
            ProgressStyle::with_template("{prefix:>8} [{bar:40}] {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        ProgressDisplay {
            bar,
            stop: config.stop,
            warmup: config.warmup,
        }
    }

    /// Shows `progress`.
    pub fn update(&self, progress: &Progress) {
        match progress.phase {
            Phase::Warmup => {
                self.bar.set_prefix("warmup");
                self.bar.set_length(self.warmup.as_millis() as u64);
                self.bar.set_position(progress.elapsed.as_millis() as u64);
                self.bar.set_message(format!(
                    "{:.1}/{:.1} s",
                    progress.elapsed.as_secs_f64(),
                    self.warmup.as_secs_f64()
                ));
            }
            Phase::Measure => {
                self.bar.set_prefix("measure");
                let secs = progress.elapsed.as_secs_f64().max(1e-3);
                let (len, pos) = match self.stop {
                    Stop::Duration(d) => {
                        (d.as_millis() as u64, progress.elapsed.as_millis() as u64)
                    }
                    Stop::Requests(n) => (n, progress.completed),
                };
                self.bar.set_length(len);
                self.bar.set_position(pos.min(len));
                self.bar.set_message(format!(
                    "{} done, {} failed, {:.0} req/s",
                    progress.completed,
                    progress.failed,
                    progress.completed as f64 / secs
                ));
            }
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// Whether [`write_file`] may create the file's missing directories.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dirs {
    /// The flag names an output directory the command owns (`compare --out`): create it.
    Create,
    /// The flag names a file (`bench --json`): a missing directory is more likely a typo than a
    /// wish, so refuse it, naming the flag and the directory.
    MustExist,
}

/// Writes `contents` to `path`, naming the flag and the path on failure.
pub fn write_file(flag: &str, path: &Path, contents: &str, dirs: Dirs) -> Result<(), String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        match dirs {
            Dirs::Create => std::fs::create_dir_all(dir)
                .map_err(|e| format!("{flag}: cannot create directory {}: {e}", dir.display()))?,
            Dirs::MustExist if !dir.is_dir() => {
                return Err(format!(
                    "{flag} {}: directory {} does not exist; create it first (mkdir -p {}) or \
                     write somewhere else",
                    path.display(),
                    dir.display(),
                    dir.display()
                ));
            }
            Dirs::MustExist => {}
        }
    }
    std::fs::write(path, contents)
        .map_err(|e| format!("{flag}: cannot write {}: {e}", path.display()))
}

/// An error when more than `max` of the measured calls failed, or none completed.
fn check_error_rate(report: &Report, max: f64) -> CliResult {
    if report.requests == 0 {
        return Err(
            "no call completed in the measured phase: is the server answering? (see \
                    the failures above)"
                .into(),
        );
    }
    let rate = report.failed as f64 / report.requests as f64;
    if rate > max {
        return Err(format!(
            "{} of {} calls failed ({:.3}%), more than --max-error-rate {} allows; see the \
             failures above, or raise --max-error-rate",
            report.failed,
            report.requests,
            rate * 100.0,
            max
        )
        .into());
    }
    Ok(())
}

/// Refuses `connections` client connections that cannot all be open at once: raises the soft
/// descriptor limit to the hard one, then checks that a descriptor per connection plus
/// [`limits::BASE_MARGIN`] for the rest of the process fit (measured: `bench -c 1` holds 13
/// descriptors, `-c 16` with two client threads 31).
pub fn check_descriptors(connections: usize) -> Result<(), String> {
    let soft = match limits::raise_nofile_limit() {
        Ok(l) => l.soft,
        Err(_) => {
            limits::nofile_limit()
                .map_err(|e| format!("cannot read the descriptor limit: {e}"))?
                .0
        }
    };
    let need = (connections as u64).saturating_add(limits::BASE_MARGIN as u64);
    if need > soft {
        return Err(format!(
            "--connections {connections} is beyond the descriptor limit ({soft}): every \
             connection is a descriptor, and the process needs about {} more; lower \
             -c/--connections to at most {}, or raise the limit to {need} (`ulimit -n {need}`; \
             above the hard limit as root)",
            limits::BASE_MARGIN,
            soft.saturating_sub(limits::BASE_MARGIN as u64)
        ));
    }
    Ok(())
}

/// Runs `shardpool bench`: validates the flags, runs the load, prints the table, writes the
/// requested files.
pub fn run(args: BenchArgs) -> CliResult {
    let config = args.config()?;
    check_descriptors(config.connections)?;
    let progress = ProgressDisplay::new(&config, args.output.quiet);
    let result = bench::run(&config, &mut |p| progress.update(p));
    progress.finish();
    let result = result?;
    let mut report = Report::new(&config, &result);
    report.run = Some(RunInfo::collect(super::COMMIT));
    super::out(&report.to_table());
    if let Some(path) = &args.output.json {
        write_file("--json", path, &report.to_json(), Dirs::MustExist)?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &args.output.svg {
        let title = format!(
            "{} latency ({}, {} conns x {} streams)",
            report.target,
            match report.rate {
                Some(rate) => format!("open loop {rate} req/s"),
                None => "closed loop".to_string(),
            },
            report.connections,
            report.streams
        );
        let series = Series {
            name: report.target.clone(),
            points: report.percentiles.clone(),
        };
        write_file(
            "--svg",
            path,
            &bench::latency_plot(&title, &[series]),
            Dirs::MustExist,
        )?;
        eprintln!("wrote {}", path.display());
    }
    check_error_rate(&report, args.max_error_rate)
}

#[cfg(test)]
mod tests {
    use super::super::{Cli, Command};
    use clap::Parser;

    /// `bench` and `compare` take the same load flags, and `--pin` is spelled as in `serve` and
    /// `origin` (a bare `--pin` means true, `--pin false` turns it off).
    #[test]
    fn bench_and_compare_share_the_load_flags() {
        let load = |args: &[&str]| match Cli::try_parse_from(args).map(|c| c.command) {
            Ok(Command::Bench(b)) => (*b.load).clone(),
            Ok(Command::Compare(c)) => c.options.load.clone(),
            other => panic!("{args:?}: {other:?}"),
        };
        for cmd in ["bench", "compare"] {
            let l = load(&[
                "shardpool",
                cmd,
                "-c",
                "4",
                "-m",
                "2",
                "--rate",
                "100",
                "--threads",
                "1",
                "--cpus",
                "0,1",
                "--pin",
                "false",
            ]);
            assert_eq!(
                (l.connections, l.streams, l.rate, l.threads, l.cpus, l.pin),
                (4, 2, Some(100.0), 1, vec![0, 1], false),
                "{cmd}"
            );
            assert!(load(&["shardpool", cmd]).pin, "{cmd}: pinned by default");
            assert!(load(&["shardpool", cmd, "--pin"]).pin, "{cmd}");
            // The old spellings still parse.
            assert_eq!(
                load(&["shardpool", cmd, "--client-cpus", "1"]).cpus,
                vec![1]
            );
            let old = load(&["shardpool", cmd, "--no-pin"]);
            assert!(
                !old.apply(shardpool::bench::BenchConfig::new(
                    ([127, 0, 0, 1], 1).into()
                ))
                .pin
            );
        }
        for pin in [&["--pin"][..], &["--pin", "true"][..]] {
            let mut args = vec!["shardpool", "origin"];
            args.extend_from_slice(pin);
            assert!(Cli::try_parse_from(&args).is_ok(), "{args:?}");
        }
        assert!(Cli::try_parse_from(["shardpool", "origin", "--pin", "false"]).is_ok());
    }
}
