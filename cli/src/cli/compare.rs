//! `shardpool compare`: starts server variants as child processes of this executable, runs the
//! same load against each in alternating rounds (A/B/C, A/B/C, ...), and prints medians and
//! ratios; writes a Markdown report, an SVG plot and JSON with every run into `--out`.
//!
//! Variants (each run starts a fresh process on a loopback port chosen here):
//! * `sharded`: `shardpool serve --pool sharded --backend ORIGIN` (gateway, per-core pool)
//! * `mutex`:   `shardpool serve --pool mutex --backend ORIGIN` (gateway, Mutex<HashMap> pool)
//! * `none`:    `shardpool serve --pool none --backend ORIGIN` (gateway, a new upstream
//!   connection per request)
//! * `direct`:  `shardpool serve --upstream none` (the Greeter answers itself)
//! * `external`: `--server-cmd`, compared with `direct`
//!
//! ORIGIN is one `shardpool origin` started for the whole comparison.

use super::CliResult;
use super::bench::{Dirs, LoadArgs, ProgressDisplay, write_file};
use super::parse;
use serde::Serialize;
use shardpool::bench::compare::{self, ReportContext, VariantRuns};
use shardpool::bench::{self, BenchConfig, Report, RunInfo, Stop};
use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A server variant `compare` can start.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum VariantKind {
    /// Gateway with the sharded per-core pool.
    Sharded,
    /// Gateway with the Mutex<HashMap<..>> baseline pool.
    Mutex,
    /// Gateway opening a new upstream connection per request.
    None,
    /// shardpool's Greeter answering itself (no upstream).
    Direct,
    /// The server started by --server-cmd.
    External,
}

impl VariantKind {
    fn name(self) -> &'static str {
        match self {
            VariantKind::Sharded => "sharded",
            VariantKind::Mutex => "mutex",
            VariantKind::None => "none",
            VariantKind::Direct => "direct",
            VariantKind::External => "external",
        }
    }

    fn needs_origin(self) -> bool {
        matches!(
            self,
            VariantKind::Sharded | VariantKind::Mutex | VariantKind::None
        )
    }
}

/// The pairs compared, in report order: (label, a, b).
const PAIRS: [(&str, VariantKind, VariantKind); 3] = [
    (
        "sharded vs mutex pool",
        VariantKind::Sharded,
        VariantKind::Mutex,
    ),
    (
        "pooled vs connect-per-request",
        VariantKind::Sharded,
        VariantKind::None,
    ),
    (
        "shardpool vs external server",
        VariantKind::Direct,
        VariantKind::External,
    ),
];

/// Arguments of `shardpool compare`.
#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// All options (boxed: keeps the subcommand enum small).
    #[command(flatten)]
    pub options: Box<CompareOptions>,
}

/// Options of `shardpool compare`.
#[derive(clap::Args, Debug)]
pub struct CompareOptions {
    /// Variants to run each round, in order [default: sharded,mutex,none, plus direct,external
    /// with --server-cmd].
    #[arg(long, value_delimiter = ',', value_enum)]
    pub variants: Vec<VariantKind>,
    /// An external Greeter server to compare with shardpool's own Greeter (`direct`): a shell
    /// command containing {addr} (HOST:PORT) or {port}, replaced by the loopback address
    /// compare picks, e.g. "./helloworld-server --addr {addr}".
    #[arg(long)]
    pub server_cmd: Option<String>,
    /// Rounds: every variant runs once per round.
    #[arg(long, default_value_t = 3, value_parser = parse::count::<usize>)]
    pub rounds: usize,
    /// Measured time per run.
    #[arg(long, short = 'd', default_value = "3s", value_parser = parse::duration)]
    pub duration: Duration,
    /// Unrecorded warmup per run (fresh server each run: connections and pools fill here).
    #[arg(long, default_value = "1s", value_parser = parse::duration)]
    pub warmup: Duration,
    /// The load (shared with `bench`).
    #[command(flatten)]
    pub load: LoadArgs,
    /// Passed as `--placement` to every `shardpool serve`, e.g. cpus:0 [default: unset].
    #[arg(long)]
    pub server_placement: Option<String>,
    /// Extra argument for every `shardpool serve` (repeat for several), e.g.
    /// --serve-arg=--shards=1.
    #[arg(long = "serve-arg", allow_hyphen_values = true)]
    pub serve_args: Vec<String>,
    /// How long a started server may take to answer its first SayHello.
    #[arg(long, default_value = "20s", value_parser = parse::duration)]
    pub startup_timeout: Duration,
    /// Directory for report.md, latency.svg, results.json and server logs.
    #[arg(long, default_value = "bench-out")]
    pub out: PathBuf,
    /// No progress bar.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// A child process killed (and reaped) when dropped, also on error or panic.
struct ChildGuard {
    child: Child,
    log: PathBuf,
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ChildGuard {
    fn spawn(mut command: Command, log: PathBuf, what: &str) -> Result<ChildGuard, String> {
        let file = File::create(&log)
            .map_err(|e| format!("--out: cannot create log {}: {e}", log.display()))?;
        let file2 = file
            .try_clone()
            .map_err(|e| format!("cannot duplicate log file handle: {e}"))?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(file2));
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start {what}: {e}"))?;
        Ok(ChildGuard { child, log })
    }

    /// The exit status if the child has already exited, with the end of its log.
    fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(format!(
                "exited ({status}) before answering; last lines of {}:\n{}",
                self.log.display(),
                log_tail(&self.log)
            )),
            _ => None,
        }
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(12)..].join("\n")
}

/// A loopback address with a port that was free a moment ago.
fn free_addr() -> Result<SocketAddr, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("cannot find a free loopback port: {e}"))
}

/// The shell command of the external server with its address filled in.
fn external_command(template: &str, addr: SocketAddr) -> Result<String, String> {
    if !template.contains("{addr}") && !template.contains("{port}") {
        return Err(
            "--server-cmd must contain {addr} or {port}, so that compare can choose the port \
             (e.g. --server-cmd \"./server --addr {addr}\")"
                .into(),
        );
    }
    Ok(template
        .replace("{addr}", &addr.to_string())
        .replace("{port}", &addr.port().to_string()))
}

struct Plan {
    options: CompareOptions,
    exe: PathBuf,
    variants: Vec<VariantKind>,
    template: BenchConfig,
    logs: PathBuf,
}

impl Plan {
    /// The argv (after the executable) or shell command of `kind` listening on `addr`.
    fn command(&self, kind: VariantKind, addr: SocketAddr, origin: Option<SocketAddr>) -> Command {
        let listen = addr.to_string();
        if kind == VariantKind::External {
            let cmd = external_command(self.options.server_cmd.as_deref().unwrap_or(""), addr)
                .unwrap_or_default();
            let mut command = Command::new("sh");
            command.arg("-c").arg(format!("exec {cmd}"));
            return command;
        }
        let mut command = Command::new(&self.exe);
        command.args(["serve", "--listen", &listen]);
        match (kind, origin) {
            (VariantKind::Direct, _) => {
                command.args(["--upstream", "none"]);
            }
            (pool, Some(origin)) => {
                command.args(["--pool", pool.name(), "--backend", &origin.to_string()]);
            }
            (_, None) => {}
        }
        if let Some(placement) = &self.options.server_placement {
            command.args(["--placement", placement]);
        }
        command.args(&self.options.serve_args);
        command
    }

    fn describe(&self, kind: VariantKind) -> String {
        match kind {
            VariantKind::External => self.options.server_cmd.clone().unwrap_or_default(),
            VariantKind::Direct => "shardpool serve --upstream none".into(),
            pool => format!("shardpool serve --pool {} --backend ORIGIN", pool.name()),
        }
    }

    fn wait_ready(
        &self,
        child: &mut ChildGuard,
        addr: SocketAddr,
        probe: &dyn Fn(SocketAddr) -> Result<(), String>,
    ) -> Result<(), String> {
        let deadline = Instant::now() + self.options.startup_timeout;
        loop {
            if let Some(exited) = child.exited() {
                return Err(exited);
            }
            let last = match probe(addr) {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(format!(
                    "not ready after {:?} (--startup-timeout): {last}; log: {}",
                    self.options.startup_timeout,
                    child.log.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn plan(args: CompareArgs) -> Result<Plan, String> {
    let options = *args.options;
    if options.rounds == 0 {
        return Err("--rounds must be at least 1".into());
    }
    let mut variants = options.variants.clone();
    if variants.is_empty() {
        variants = vec![VariantKind::Sharded, VariantKind::Mutex, VariantKind::None];
        if options.server_cmd.is_some() {
            variants.extend([VariantKind::Direct, VariantKind::External]);
        }
    }
    variants.dedup();
    match &options.server_cmd {
        None if variants.contains(&VariantKind::External) => {
            return Err("variant `external` needs --server-cmd \"COMMAND {addr}\"".into());
        }
        Some(cmd) => {
            external_command(cmd, SocketAddr::from(([127, 0, 0, 1], 1)))?;
        }
        None => {}
    }
    let template = options
        .load
        .apply(BenchConfig::new(SocketAddr::from(([127, 0, 0, 1], 1))))
        .stop(Stop::Duration(options.duration))
        .warmup(options.warmup);
    template.validate().map_err(|e| e.to_string())?;
    super::bench::check_descriptors(options.load.connections)?;
    let exe = std::env::current_exe()
        .map_err(|e| format!("cannot find the shardpool executable to start servers: {e}"))?;
    let logs = options.out.join("logs");
    std::fs::create_dir_all(&logs)
        .map_err(|e| format!("--out: cannot create {}: {e}", logs.display()))?;
    Ok(Plan {
        options,
        exe,
        variants,
        template,
        logs,
    })
}

/// Every run of one variant, for results.json.
#[derive(Serialize)]
struct VariantJson<'a> {
    variant: &'a str,
    command: &'a str,
    skipped: Option<&'a str>,
    runs: &'a [Report],
}

/// Runs `shardpool compare`: starts the origin and each variant in turn, measures them in
/// alternating rounds, prints medians and ratios, writes the report files.
pub fn run(args: CompareArgs) -> CliResult {
    let plan = plan(args)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a tokio runtime: {e}"))?;
    let local = tokio::task::LocalSet::new();
    let probe = |addr| local.block_on(&runtime, bench::probe(addr, Duration::from_secs(1)));

    let mut results: Vec<VariantRuns> = plan
        .variants
        .iter()
        .map(|&k| VariantRuns::new(k.name(), plan.describe(k)))
        .collect();

    // One origin backend for every gateway variant of the whole comparison.
    let mut origin_guard = None;
    let mut origin_error = None;
    if plan.variants.iter().any(|v| v.needs_origin()) {
        let addr = free_addr()?;
        let mut command = Command::new(&plan.exe);
        command.args(["origin", "--listen", &addr.to_string()]);
        let mut guard =
            ChildGuard::spawn(command, plan.logs.join("origin.log"), "shardpool origin")?;
        let deadline = Instant::now() + plan.options.startup_timeout;
        loop {
            if let Some(exited) = guard.exited() {
                origin_error = Some(format!("`shardpool origin` {exited}"));
                break;
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                origin_guard = Some((guard, addr));
                break;
            }
            if Instant::now() >= deadline {
                origin_error = Some(format!(
                    "`shardpool origin` did not listen on {addr} within {:?}",
                    plan.options.startup_timeout
                ));
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let origin = origin_guard.as_ref().map(|(_, addr)| *addr);
    if let Some(e) = &origin_error {
        for (k, r) in plan.variants.iter().zip(results.iter_mut()) {
            if k.needs_origin() {
                r.skipped = Some(e.clone());
            }
        }
    }

    let total_runs = plan.options.rounds * plan.variants.len();
    let mut done = 0;
    for round in 1..=plan.options.rounds {
        for (index, &kind) in plan.variants.iter().enumerate() {
            done += 1;
            if results[index].skipped.is_some() {
                continue;
            }
            let addr = free_addr()?;
            let log = plan.logs.join(format!("{}-round{round}.log", kind.name()));
            let mut child = ChildGuard::spawn(plan.command(kind, addr, origin), log, kind.name())?;
            if let Err(e) = plan.wait_ready(&mut child, addr, &probe) {
                eprintln!("compare: variant {} skipped: {e}", kind.name());
                results[index].skipped = Some(e);
                continue;
            }
            let mut config = plan.template.clone();
            config.target = addr;
            config.authority = addr.to_string();
            config.pool_metrics = kind != VariantKind::External && kind != VariantKind::Direct;
            let progress = ProgressDisplay::new(&config, plan.options.quiet);
            let outcome = bench::run(&config, &mut |p| progress.update(p));
            progress.finish();
            drop(child);
            let result = match outcome {
                Ok(result) => result,
                Err(e) => {
                    let reason = format!("round {round}: {e}");
                    eprintln!("compare: variant {} skipped: {reason}", kind.name());
                    results[index].skipped = Some(reason);
                    continue;
                }
            };
            let report = Report::new(&config, &result);
            eprintln!(
                "[{done}/{total_runs}] round {round} {:<8} {:>9.0} ok req/s  p50 {:>9}  p99 {:>9}  failed {}",
                kind.name(),
                report.ok_qps,
                bench::format_us(report.latency.p50_us),
                bench::format_us(report.latency.p99_us),
                report.failed
            );
            results[index].merged.merge(&result.latency);
            results[index].reports.push(report);
        }
    }
    drop(origin_guard);

    let find = |kind: VariantKind| {
        plan.variants
            .iter()
            .position(|&k| k == kind)
            .map(|i| &results[i])
    };
    let ratios: Vec<_> = PAIRS
        .iter()
        .filter_map(|&(label, a, b)| compare::ratio(label, find(a)?, find(b)?))
        .collect();

    super::out(&format!("\n{}", compare::text_table(&results, &ratios)));

    let load = format!(
        "{}, {} connections x {} streams, {:?} warmup + {:?} measured per run, {} rounds, client threads: {}",
        match plan.options.load.rate {
            Some(rate) => format!("open loop at {rate} req/s"),
            None => "closed loop".to_string(),
        },
        plan.options.load.connections,
        plan.options.load.streams,
        plan.options.warmup,
        plan.options.duration,
        plan.options.rounds,
        match plan.options.load.threads {
            0 => "one per CPU".to_string(),
            n => n.to_string(),
        }
    );
    let run = RunInfo::collect(super::COMMIT);
    for report in results.iter_mut().flat_map(|v| v.reports.iter_mut()) {
        report.run = Some(run.clone());
    }
    let ctx = ReportContext {
        run,
        load: load.clone(),
        plot_file: "latency.svg".into(),
    };
    let out = &plan.options.out;
    let md_path = out.join("report.md");
    let svg_path = out.join("latency.svg");
    let json_path = out.join("results.json");
    write_file(
        "--out",
        &md_path,
        &compare::markdown(&ctx, &results, &ratios),
        Dirs::Create,
    )?;
    write_file(
        "--out",
        &svg_path,
        &compare::plot(
            &format!(
                "Greeter latency, {} conns x {} streams",
                plan.options.load.connections, plan.options.load.streams
            ),
            &results,
        ),
        Dirs::Create,
    )?;
    let json: Vec<VariantJson> = results
        .iter()
        .map(|v| VariantJson {
            variant: &v.name,
            command: &v.command,
            skipped: v.skipped.as_deref(),
            runs: &v.reports,
        })
        .collect();
    let json = serde_json::to_string_pretty(&json).map_err(|e| format!("JSON: {e}"))?;
    write_file("--out", &json_path, &json, Dirs::Create)?;
    super::out(&format!(
        "\nwrote {}, {} and {}\n",
        md_path.display(),
        svg_path.display(),
        json_path.display()
    ));
    if results.iter().all(|v| v.reports.is_empty()) {
        return Err(
            "no variant could be measured (see the reasons above and the logs in --out)".into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_command_needs_a_placeholder() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 4000));
        assert_eq!(
            external_command("srv --addr {addr} --port {port}", addr).unwrap(),
            "srv --addr 127.0.0.1:4000 --port 4000"
        );
        assert!(
            external_command("srv", addr)
                .unwrap_err()
                .contains("{addr}")
        );
    }
}
