//! Where, when and how a report was made, so that a report read later, or beside others, says
//! which build ran on which machine with which command.

use serde::Serialize;
use std::time::{SystemTime, UNIX_EPOCH};

/// The provenance of a report: the build, the time, the machine and the command line.
///
/// ```
/// use shardpool::bench::RunInfo;
///
/// let info = RunInfo::collect("0123abcd");
/// assert_eq!(info.commit, "0123abcd");
/// assert!(info.cpus >= 1);
/// assert!(info.date_utc.ends_with('Z') && info.date_utc.len() == 20);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RunInfo {
    /// The commit the binary was built from (as the caller knows it; `"unknown"` if not).
    pub commit: String,
    /// When the report was made, UTC, RFC 3339 to the second (`2026-12-03T20:41:07Z`).
    pub date_utc: String,
    /// The host name (`/proc/sys/kernel/hostname`).
    pub host: String,
    /// The kernel release (`/proc/sys/kernel/osrelease`).
    pub kernel: String,
    /// The first CPU's model name (`/proc/cpuinfo`).
    pub cpu_model: String,
    /// CPUs this process may run on.
    pub cpus: usize,
    /// The process's command line, arguments with white space quoted.
    pub command_line: String,
}

impl RunInfo {
    /// Reads the machine and the command line now; `commit` comes from the caller's build.
    pub fn collect(commit: &str) -> RunInfo {
        let read = |path: &str| {
            std::fs::read_to_string(path)
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "unknown".into())
        };
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("model name"))
                    .and_then(|rest| rest.split_once(':'))
                    .map(|(_, model)| model.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let seconds = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        RunInfo {
            commit: if commit.is_empty() { "unknown" } else { commit }.to_string(),
            date_utc: rfc3339_utc(seconds),
            host: read("/proc/sys/kernel/hostname"),
            kernel: read("/proc/sys/kernel/osrelease"),
            cpu_model,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            command_line: std::env::args()
                .map(|a| {
                    if a.is_empty() || a.contains(char::is_whitespace) {
                        format!("\"{a}\"")
                    } else {
                        a
                    }
                })
                .collect::<Vec<_>>()
                .join(" "),
        }
    }

    /// One line for a text report: commit, date, host, CPUs, kernel.
    pub fn summary(&self) -> String {
        format!(
            "commit {}, {}, {} ({} CPUs, {}, Linux {})",
            self.commit, self.date_utc, self.host, self.cpus, self.cpu_model, self.kernel
        )
    }
}

/// `seconds` since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ` (the proleptic Gregorian calendar,
/// by the days-to-civil conversion).
fn rfc3339_utc(seconds: u64) -> String {
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    // Days since 0000-03-01, so that leap days fall at the end of a 400-year era's years.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3_600,
        rest % 3_600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::rfc3339_utc;

    #[test]
    fn dates_are_rfc3339_utc() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        // A leap day, the day after, and the end of a century year that is not a leap year.
        assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(951_868_799), "2000-02-29T23:59:59Z");
        assert_eq!(rfc3339_utc(4_107_542_399), "2100-02-28T23:59:59Z");
        assert_eq!(rfc3339_utc(4_107_542_400), "2100-03-01T00:00:00Z");
        assert_eq!(rfc3339_utc(1_796_330_467), "2026-12-03T20:41:07Z");
    }
}
