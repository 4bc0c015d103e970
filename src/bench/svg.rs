//! A hand-written SVG latency-percentile plot: latency on a log scale against percentile on a
//! "nines" axis (0, 90, 99, 99.9, 99.99 %), one line per series, with axes, labels and a legend.

use super::histogram::PercentilePoint;
use super::report::format_us;
use std::fmt::Write as _;

/// One line of the plot.
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// Points; percentiles above 99.99 and non-positive latencies are left out.
    pub points: Vec<PercentilePoint>,
}

const WIDTH: f64 = 860.0;
const HEIGHT: f64 = 520.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 220.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;
const MAX_NINES: f64 = 4.0;
const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

fn nines(percentile: f64) -> f64 {
    -(1.0 - percentile / 100.0).log10()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Renders the plot. With no plottable point it still renders axes and says "no data".
///
/// # Example
///
/// ```
/// use shardpool::bench::{LatencyHistogram, Series, latency_plot};
/// use std::time::Duration;
///
/// let mut h = LatencyHistogram::new();
/// for us in 1..=1000 {
///     h.record(Duration::from_micros(us));
/// }
/// let series = Series { name: "ours".into(), points: h.percentile_curve(10) };
/// let svg = latency_plot("Greeter latency", &[series]);
/// assert!(svg.starts_with("<svg") && svg.contains("<polyline"));
/// assert!(svg.trim_end().ends_with("</svg>"));
/// ```
pub fn latency_plot(title: &str, series: &[Series]) -> String {
    let plottable =
        |p: &PercentilePoint| p.latency_us > 0.0 && nines(p.percentile) <= MAX_NINES + 1e-9;
    let values = series.iter().flat_map(|s| {
        s.points
            .iter()
            .filter(|p| plottable(p))
            .map(|p| p.latency_us)
    });
    let (lo, hi) = values.fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let (lo_dec, hi_dec) = if lo.is_finite() {
        let lo_dec = lo.log10().floor();
        let hi_dec = hi.log10().ceil().max(lo_dec + 1.0);
        (lo_dec, hi_dec)
    } else {
        (1.0, 3.0)
    };
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |percentile: f64| LEFT + nines(percentile).min(MAX_NINES) / MAX_NINES * plot_w;
    let y = |us: f64| TOP + plot_h - (us.log10() - lo_dec) / (hi_dec - lo_dec) * plot_h;

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="28" font-size="16" text-anchor="middle">{}</text>"#,
        LEFT + plot_w / 2.0,
        escape(title)
    );

    // Vertical grid lines and percentile labels.
    for (percentile, label) in [
        (0.0, "0%"),
        (50.0, "50%"),
        (90.0, "90%"),
        (99.0, "99%"),
        (99.9, "99.9%"),
        (99.99, "99.99%"),
    ] {
        let px = x(percentile);
        let _ = writeln!(
            svg,
            r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="#ddd"/>"##,
            TOP + plot_h
        );
        let _ = writeln!(
            svg,
            r#"<text x="{px:.1}" y="{:.1}" text-anchor="middle">{label}</text>"#,
            TOP + plot_h + 18.0
        );
    }
    // Horizontal grid lines and latency labels: every decade, plus 2x and 5x for short ranges.
    let multipliers: &[f64] = if hi_dec - lo_dec <= 2.0 {
        &[1.0, 2.0, 5.0]
    } else {
        &[1.0]
    };
    let mut decade = lo_dec;
    while decade <= hi_dec {
        for m in multipliers {
            let us = m * 10f64.powf(decade);
            if us.log10() > hi_dec + 1e-9 {
                continue;
            }
            let py = y(us);
            let _ = writeln!(
                svg,
                r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="{}"/>"##,
                LEFT + plot_w,
                if *m == 1.0 { "#ccc" } else { "#eee" }
            );
            let _ = writeln!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                LEFT - 6.0,
                py + 4.0,
                compact(us)
            );
        }
        decade += 1.0;
    }
    // Axes and their titles.
    let _ = writeln!(
        svg,
        r#"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="black"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 16.0
    );
    let _ = writeln!(
        svg,
        r#"<text x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">latency (log scale)</text>"#,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0
    );

    let mut any = false;
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<String> = s
            .points
            .iter()
            .filter(|p| plottable(p))
            .map(|p| format!("{:.1},{:.1}", x(p.percentile), y(p.latency_us)))
            .collect();
        if !points.is_empty() {
            any = true;
            let _ = writeln!(
                svg,
                r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
                points.join(" ")
            );
        }
        let ly = TOP + 10.0 + 22.0 * i as f64;
        let lx = LEFT + plot_w + 16.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="3"/>"#,
            lx + 24.0
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            lx + 30.0,
            ly + 4.0,
            escape(&s.name)
        );
    }
    if !any {
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="16">no data</text>"#,
            LEFT + plot_w / 2.0,
            TOP + plot_h / 2.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// Axis label: `format_us` without needless decimals (`100us`, `2ms`).
fn compact(us: f64) -> String {
    let full = format_us(us);
    let unit_at = full
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(full.len());
    let (number, unit) = full.split_at(unit_at);
    let number = number.trim_end_matches('0').trim_end_matches('.');
    format!("{number}{unit}")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Checks that every tag is closed in order and attributes are quoted: enough to catch
    /// what a hand-written SVG gets wrong (an XML parser is not a dependency of this crate).
    pub(crate) fn assert_well_formed(svg: &str) {
        let mut stack: Vec<String> = Vec::new();
        let mut rest = svg;
        while let Some(open) = rest.find('<') {
            let close = rest[open..].find('>').expect("unclosed tag") + open;
            let tag = &rest[open + 1..close];
            assert!(!tag.contains('<'), "nested '<' in tag {tag:?}");
            assert_eq!(
                tag.matches('"').count() % 2,
                0,
                "unbalanced quotes in {tag:?}"
            );
            let text = &rest[..open];
            assert!(!text.contains('>'), "stray '>' in text {text:?}");
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(stack.pop().as_deref(), Some(name), "mismatched </{name}>");
            } else if !tag.ends_with('/') {
                let name = tag.split_whitespace().next().unwrap_or_default();
                stack.push(name.to_string());
            }
            rest = &rest[close + 1..];
        }
        assert!(stack.is_empty(), "unclosed elements: {stack:?}");
    }

    fn series(name: &str, scale: f64) -> Series {
        Series {
            name: name.into(),
            points: vec![
                PercentilePoint {
                    percentile: 0.0,
                    latency_us: 40.0 * scale,
                },
                PercentilePoint {
                    percentile: 99.0,
                    latency_us: 300.0 * scale,
                },
                PercentilePoint {
                    percentile: 99.99,
                    latency_us: 2500.0 * scale,
                },
                PercentilePoint {
                    percentile: 100.0,
                    latency_us: 9000.0 * scale,
                },
            ],
        }
    }

    #[test]
    fn plot_is_well_formed_with_one_line_per_series() {
        let svg = latency_plot(
            "A <&> B",
            &[series("sharded", 1.0), series("mutex \"m\"", 2.0)],
        );
        assert_well_formed(&svg);
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("A &lt;&amp;&gt; B"));
        assert!(svg.contains("mutex &quot;m&quot;"));
        for label in [
            "99.99%",
            "99.9%",
            "percentile",
            "latency (log scale)",
            "100us",
            "1ms",
        ] {
            assert!(svg.contains(label), "missing {label}");
        }
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }

    #[test]
    fn points_beyond_four_nines_are_dropped() {
        let svg = latency_plot("t", &[series("a", 1.0)]);
        let line = svg.lines().find(|l| l.starts_with("<polyline")).unwrap();
        let points = line
            .split("points=\"")
            .nth(1)
            .unwrap()
            .trim_end_matches("\"/>");
        assert_eq!(points.split(' ').count(), 3);
    }

    #[test]
    fn empty_plot_says_no_data() {
        let svg = latency_plot(
            "t",
            &[Series {
                name: "none".into(),
                points: Vec::new(),
            }],
        );
        assert_well_formed(&svg);
        assert!(svg.contains("no data"));
        assert!(!svg.contains("<polyline"));
    }

    #[test]
    fn compact_labels() {
        assert_eq!(compact(100.0), "100us");
        assert_eq!(compact(2000.0), "2ms");
        assert_eq!(compact(5.0), "5us");
        assert_eq!(compact(1_000_000.0), "1s");
    }
}
