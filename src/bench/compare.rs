//! Statistics and reports of `shardpool compare`: several server variants measured in
//! alternating rounds (A/B/A/B), summarised by medians, compared by ratios.
//!
//! Process handling (starting the variants) lives in the CLI; this module only does the arithmetic
//! and the writing, so that it can be tested without servers.

use super::histogram::LatencyHistogram;
use super::report::{Report, format_us};
use super::svg::{Series, latency_plot};
use std::fmt::Write as _;

/// All runs of one variant.
#[derive(Clone, Debug)]
pub struct VariantRuns {
    /// Short name (`sharded`, `mutex`, ...).
    pub name: String,
    /// What was started, for the report.
    pub command: String,
    /// One report per completed round.
    pub reports: Vec<Report>,
    /// Latency of every successful call over all rounds (for the plot).
    pub merged: LatencyHistogram,
    /// Why the variant was not (fully) measured, if it was not.
    pub skipped: Option<String>,
}

impl VariantRuns {
    /// A variant with no runs yet.
    pub fn new(name: impl Into<String>, command: impl Into<String>) -> Self {
        VariantRuns {
            name: name.into(),
            command: command.into(),
            reports: Vec::new(),
            merged: LatencyHistogram::new(),
            skipped: None,
        }
    }

    /// Medians over the rounds (`None` without a completed round).
    pub fn summary(&self) -> Option<Summary> {
        if self.reports.is_empty() {
            return None;
        }
        let of =
            |f: &dyn Fn(&Report) -> f64| median(&self.reports.iter().map(f).collect::<Vec<_>>());
        let reuse: Vec<f64> = self
            .reports
            .iter()
            .filter_map(|r| r.pool.as_ref().and_then(|p| p.reuse_rate))
            .collect();
        Some(Summary {
            runs: self.reports.len(),
            qps: of(&|r| r.ok_qps),
            p50_us: of(&|r| r.latency.p50_us),
            p99_us: of(&|r| r.latency.p99_us),
            p999_us: of(&|r| r.latency.p999_us),
            failed: self.reports.iter().map(|r| r.failed).sum(),
            reuse_rate: (!reuse.is_empty()).then(|| median(&reuse)),
            steals: self
                .reports
                .iter()
                .filter_map(|r| r.pool.as_ref().map(|p| p.steals))
                .max(),
        })
    }
}

/// Medians of one variant's rounds.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    /// Completed rounds.
    pub runs: usize,
    /// Median successful calls per second.
    pub qps: f64,
    /// Median of the rounds' p50 latency.
    pub p50_us: f64,
    /// Median of the rounds' p99 latency.
    pub p99_us: f64,
    /// Median of the rounds' p99.9 latency.
    pub p999_us: f64,
    /// Failed calls over all rounds.
    pub failed: u64,
    /// Median pool reuse rate (shardpool targets with a pool only).
    pub reuse_rate: Option<f64>,
    /// Most steals seen in one round.
    pub steals: Option<u64>,
}

/// The median of `values` (mean of the middle two for an even count; 0 when empty).
///
/// # Example
///
/// ```
/// use shardpool::bench::compare::median;
///
/// assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
/// assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
/// ```
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// A comparison of two variants: what `a` is relative to `b`.
#[derive(Clone, Debug, PartialEq)]
pub struct Ratio {
    /// What is compared, e.g. "sharded vs mutex pool".
    pub label: String,
    /// Variant names.
    pub a: String,
    /// Variant names.
    pub b: String,
    /// `qps(a) / qps(b)`: above 1 means `a` is faster.
    pub qps: f64,
    /// `p50(a) / p50(b)`: below 1 means `a` answers sooner.
    pub p50: f64,
    /// `p99(a) / p99(b)`.
    pub p99: f64,
}

/// The ratio of the medians of `a` and `b`, if both have runs.
pub fn ratio(label: &str, a: &VariantRuns, b: &VariantRuns) -> Option<Ratio> {
    let (sa, sb) = (a.summary()?, b.summary()?);
    let div = |x: f64, y: f64| if y > 0.0 { x / y } else { f64::NAN };
    Some(Ratio {
        label: label.to_string(),
        a: a.name.clone(),
        b: b.name.clone(),
        qps: div(sa.qps, sb.qps),
        p50: div(sa.p50_us, sb.p50_us),
        p99: div(sa.p99_us, sb.p99_us),
    })
}

/// Text fit for one Markdown table cell: no line breaks, no column separators.
fn cell(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" / ")
        .replace('|', "\\|")
}

fn fmt_ratio(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.2}x")
    } else {
        "n/a".to_string()
    }
}

fn fmt_reuse(s: &Summary) -> String {
    s.reuse_rate
        .map_or("-".to_string(), |r| format!("{:.2} %", r * 100.0))
}

/// The medians and ratios as a plain-text table (for stdout).
pub fn text_table(variants: &[VariantRuns], ratios: &[Ratio]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<10} {:>4} {:>12} {:>10} {:>10} {:>10} {:>8} {:>9} {:>7}",
        "variant", "runs", "ok req/s", "p50", "p99", "p99.9", "failed", "reuse", "steals"
    );
    for v in variants {
        match v.summary() {
            Some(s) => {
                let _ = writeln!(
                    out,
                    "{:<10} {:>4} {:>12.0} {:>10} {:>10} {:>10} {:>8} {:>9} {:>7}",
                    v.name,
                    s.runs,
                    s.qps,
                    format_us(s.p50_us),
                    format_us(s.p99_us),
                    format_us(s.p999_us),
                    s.failed,
                    fmt_reuse(&s),
                    s.steals.map_or("-".to_string(), |n| n.to_string())
                );
            }
            None => {
                let _ = writeln!(out, "{:<10}    0  not measured", v.name);
            }
        }
        if let Some(reason) = &v.skipped {
            for line in reason.lines() {
                let _ = writeln!(out, "{:<10}   | {line}", "");
            }
        }
    }
    if !ratios.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<40} {:>9} {:>9} {:>9}",
            "ratio of medians (a / b)", "req/s", "p50", "p99"
        );
        for r in ratios {
            let _ = writeln!(
                out,
                "{:<40} {:>9} {:>9} {:>9}",
                format!("{} ({} / {})", r.label, r.a, r.b),
                fmt_ratio(r.qps),
                fmt_ratio(r.p50),
                fmt_ratio(r.p99)
            );
        }
    }
    out
}

/// Everything the Markdown report needs besides the runs.
#[derive(Clone, Debug)]
pub struct ReportContext {
    /// The build, date, machine and command line.
    pub run: super::RunInfo,
    /// One line describing the load of every run.
    pub load: String,
    /// File name of the SVG plot (relative to the report).
    pub plot_file: String,
}

/// The Markdown report: method, per-run figures, medians, ratios, plot.
pub fn markdown(ctx: &ReportContext, variants: &[VariantRuns], ratios: &[Ratio]) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# shardpool compare\n");
    let _ = writeln!(md, "Command: `{}`\n", ctx.run.command_line);
    let _ = writeln!(md, "Run: {}.\n", ctx.run.summary());
    let _ = writeln!(
        md,
        "Machine: {} CPUs. Load: {}. Each run starts a fresh server process; variants run in \
         alternating rounds (A/B/C, A/B/C, ...) so that drifts in machine load hit all of them \
         alike; figures below are medians over the rounds. Latency is that of successful calls.\n",
        ctx.run.cpus, ctx.load
    );
    let _ = writeln!(md, "## Variants\n");
    let _ = writeln!(md, "| variant | command |\n|---|---|");
    for v in variants {
        let _ = writeln!(md, "| {} | `{}` |", v.name, v.command);
    }
    let _ = writeln!(md, "\n## Medians\n");
    let _ = writeln!(
        md,
        "| variant | runs | ok req/s | p50 | p99 | p99.9 | failed | pool reuse | steals (max) |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for v in variants {
        match v.summary() {
            Some(s) => {
                let _ = writeln!(
                    md,
                    "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} |",
                    v.name,
                    s.runs,
                    s.qps,
                    format_us(s.p50_us),
                    format_us(s.p99_us),
                    format_us(s.p999_us),
                    s.failed,
                    fmt_reuse(&s),
                    s.steals.map_or("-".to_string(), |n| n.to_string())
                );
            }
            None => {
                let _ = writeln!(
                    md,
                    "| {} | 0 | not measured: {} | | | | | | |",
                    v.name,
                    cell(v.skipped.as_deref().unwrap_or("no run completed"))
                );
            }
        }
    }
    if variants
        .iter()
        .any(|v| v.skipped.is_some() && v.summary().is_some())
    {
        let _ = writeln!(md, "\nIncomplete variants:\n");
        for v in variants.iter().filter(|v| v.summary().is_some()) {
            if let Some(reason) = &v.skipped {
                let _ = writeln!(md, "- {}: {}", v.name, cell(reason));
            }
        }
    }
    let _ = writeln!(md, "\n## Ratios of medians\n");
    if ratios.is_empty() {
        let _ = writeln!(md, "No pair of variants was measured.");
    } else {
        let _ = writeln!(
            md,
            "Above 1 in req/s means the first variant serves more; below 1 in latency means it answers sooner.\n"
        );
        let _ = writeln!(
            md,
            "| comparison | req/s | p50 | p99 |\n|---|---:|---:|---:|"
        );
        for r in ratios {
            let _ = writeln!(
                md,
                "| {} ({} / {}) | {} | {} | {} |",
                r.label,
                r.a,
                r.b,
                fmt_ratio(r.qps),
                fmt_ratio(r.p50),
                fmt_ratio(r.p99)
            );
        }
    }
    let _ = writeln!(md, "\n## Every run\n");
    let _ = writeln!(
        md,
        "| round | variant | ok req/s | p50 | p99 | p99.9 | max | failed |\n|---:|---|---:|---:|---:|---:|---:|---:|"
    );
    let rounds = variants.iter().map(|v| v.reports.len()).max().unwrap_or(0);
    for round in 0..rounds {
        for v in variants {
            if let Some(r) = v.reports.get(round) {
                let _ = writeln!(
                    md,
                    "| {} | {} | {:.0} | {} | {} | {} | {} | {} |",
                    round + 1,
                    v.name,
                    r.ok_qps,
                    format_us(r.latency.p50_us),
                    format_us(r.latency.p99_us),
                    format_us(r.latency.p999_us),
                    format_us(r.latency.max_us),
                    r.failed
                );
            }
        }
    }
    let _ = writeln!(
        md,
        "\n## Latency by percentile\n\nAll successful calls of all rounds per variant.\n\n![latency by percentile]({})",
        ctx.plot_file
    );
    md
}

/// The SVG plot of every measured variant's merged latency.
pub fn plot(title: &str, variants: &[VariantRuns]) -> String {
    let series: Vec<Series> = variants
        .iter()
        .filter(|v| v.merged.count() > 0)
        .map(|v| Series {
            name: v.name.clone(),
            points: v.merged.percentile_curve(20),
        })
        .collect();
    latency_plot(title, &series)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::config::BenchConfig;
    use crate::bench::runner::RunResult;
    use std::time::Duration;

    fn report(qps_calls: u64, latency_us: u64) -> Report {
        let mut latency = LatencyHistogram::new();
        for _ in 0..qps_calls {
            latency.record(Duration::from_micros(latency_us));
        }
        let result = RunResult {
            service: latency.clone(),
            latency,
            ok: qps_calls,
            failures: Default::default(),
            elapsed: Duration::from_secs(1),
            unsent: 0,
            shards: 1,
            pinned: vec![None],
            pool: None,
            pool_error: None,
        };
        Report::new(&BenchConfig::new("127.0.0.1:1".parse().unwrap()), &result)
    }

    fn variant(name: &str, runs: &[(u64, u64)]) -> VariantRuns {
        let mut v = VariantRuns::new(name, format!("shardpool serve --pool {name}"));
        for &(qps, us) in runs {
            v.reports.push(report(qps, us));
            v.merged.record(Duration::from_micros(us));
        }
        v
    }

    #[test]
    fn medians_ignore_an_outlier_round() {
        let v = variant("sharded", &[(1000, 100), (10, 5000), (1200, 120)]);
        let s = v.summary().unwrap();
        assert_eq!(s.runs, 3);
        assert_eq!(s.qps, 1000.0);
        assert!((s.p50_us - 120.0).abs() < 1.0, "{s:?}");
        assert_eq!(s.reuse_rate, None);
        assert!(VariantRuns::new("x", "y").summary().is_none());
    }

    #[test]
    fn ratios_compare_medians() {
        let a = variant("sharded", &[(2000, 100), (2000, 100)]);
        let b = variant("mutex", &[(1000, 200), (1000, 200)]);
        let r = ratio("sharded vs mutex pool", &a, &b).unwrap();
        assert!((r.qps - 2.0).abs() < 1e-9);
        assert!((r.p50 - 0.5).abs() < 0.01, "{r:?}");
        assert!(ratio("x", &a, &VariantRuns::new("none", "")).is_none());
    }

    #[test]
    fn reports_show_medians_ratios_and_skips() {
        let a = variant("sharded", &[(2000, 100)]);
        let b = variant("mutex", &[(1000, 200)]);
        let mut c = VariantRuns::new("none", "shardpool serve --pool none");
        c.skipped = Some("exited before ready:\nerror: unknown flag --pool | x".into());
        let ratios = vec![ratio("sharded vs mutex pool", &a, &b).unwrap()];
        let variants = [a, b, c];
        let text = text_table(&variants, &ratios);
        assert!(text.contains("2000"), "{text}");
        assert!(text.contains("2.00x"), "{text}");
        assert!(text.contains("unknown flag --pool"), "{text}");
        let ctx = ReportContext {
            run: crate::bench::RunInfo {
                command_line: "shardpool compare".into(),
                cpus: 2,
                ..crate::bench::RunInfo::collect("0123abcd")
            },
            load: "closed loop".into(),
            plot_file: "latency.svg".into(),
        };
        let md = markdown(&ctx, &variants, &ratios);
        for needle in [
            "# shardpool compare",
            "Run: commit 0123abcd, ",
            "| sharded | 1 | 2000 |",
            "| sharded vs mutex pool (sharded / mutex) | 2.00x | 0.50x | 0.50x |",
            "not measured: exited before ready: / error: unknown flag --pool \\| x |",
            "| 1 | mutex | 1000 |",
            "![latency by percentile](latency.svg)",
        ] {
            assert!(md.contains(needle), "missing {needle:?} in\n{md}");
        }
        let svg = plot("t", &variants);
        crate::bench::svg::tests::assert_well_formed(&svg);
        assert_eq!(svg.matches("<polyline").count(), 2);
    }
}
