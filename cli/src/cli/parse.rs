//! The value parsers every subcommand uses, for flags, environment variables and config-file
//! keys alike: one spelling of a duration, a size, an address or a count is accepted (or refused
//! with the same message) wherever it appears.
//!
//! Accepted spellings (also in `--help` of each subcommand, via [`SPELLINGS`]):
//! * durations: a number and a unit, `ns`, `us`/`µs`, `ms`, `s`/`sec`/`secs`, `m`/`min`/`mins`,
//!   `h`; a bare number is seconds; fractions allowed (`1.5s`); at most 10 years. `off`/`none`
//!   where a knob can be disabled.
//! * sizes: a whole number of bytes, or with `k`/`KB`/`KiB`, `m`/`MB`/`MiB`, `g`/`GB`/`GiB` (all
//!   binary: 1KiB = 1024).
//! * addresses: `IP:PORT`, or a bare `PORT` meaning `127.0.0.1:PORT`.
//! * counts: a whole number (a negative one is refused with a message about the value).
//! * booleans: `true`/`false` (also `yes`/`no`, `on`/`off`, `1`/`0`).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

/// A setting that may be `off` (or `auto`): `None`. An alias, so that clap reads the whole
/// `Option` from the parser.
pub type Off<T> = Option<T>;

/// The spellings, for `--help` (`after_help` of the subcommands).
pub const SPELLINGS: &str = "Values: durations like 500ms, 10s, 1.5s, 2m, 1h (units ns, us, ms, \
s/sec/secs, m/min/mins, h; a bare number is seconds); sizes like 65536, 64KiB, 1MiB; addresses \
IP:PORT or a bare PORT (127.0.0.1); booleans true/false.";

/// A duration: see the module doc. The one implementation is the library's
/// [`shardpool::bench::parse_duration`], so `bench` and `serve` accept the same spellings.
pub fn duration(s: &str) -> Result<Duration, String> {
    shardpool::bench::parse_duration(s)
}

/// A fraction from 0 to 1, as a number (`0.01`) or a percentage (`1%`).
pub fn fraction(s: &str) -> Result<f64, String> {
    let (number, scale) = match s.trim().strip_suffix('%') {
        Some(p) => (p.trim(), 100.0),
        None => (s.trim(), 1.0),
    };
    match number.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=scale).contains(&v) => Ok(v / scale),
        Ok(_) => Err(format!(
            "`{s}` is outside 0 to 1 (0% to 100%): give a fraction like 0.01 or a percentage like 1%"
        )),
        Err(_) => Err(format!(
            "`{s}` is not a fraction: give a number from 0 to 1 (0.01) or a percentage (1%)"
        )),
    }
}

/// A duration longer than zero.
pub fn positive_duration(s: &str) -> Result<Duration, String> {
    match duration(s)? {
        d if d.is_zero() => Err("must be longer than 0".into()),
        d => Ok(d),
    }
}

/// `off`/`none`/`0` (`None`) or a duration.
pub fn opt_duration(s: &str) -> Result<Option<Duration>, String> {
    if matches!(s.trim(), "off" | "none" | "0") {
        Ok(None)
    } else {
        duration(s).map(Some)
    }
}

/// `off`/`none`/`0` (`None`) or a TCP keepalive idle time: whole seconds from 1 to 32767, the
/// kernel's range for `TCP_KEEPIDLE` (outside it, setting the socket option fails with EINVAL on
/// every connection).
pub fn opt_keepalive(s: &str) -> Result<Option<Duration>, String> {
    match opt_duration(s)? {
        None => Ok(None),
        Some(d) if d.subsec_nanos() == 0 && (1..=32_767).contains(&d.as_secs()) => Ok(Some(d)),
        Some(_) => Err(format!(
            "`{s}` is not a TCP keepalive time: whole seconds from 1s to 32767s (the kernel's \
             range), or `off`"
        )),
    }
}

/// `off`/`none`/`0` (`None`) or a duration longer than zero: a knob whose zero would make every
/// call fail, where the way to disable it is `off`.
pub fn opt_positive_duration(s: &str) -> Result<Option<Duration>, String> {
    match opt_duration(s)? {
        Some(d) if d.is_zero() => Err(format!(
            "`{}` is zero, which would fail every call at once; give a longer duration, or \
             `off` for none",
            s.trim()
        )),
        d => Ok(d),
    }
}

/// The message for a value that starts with `-`, if it does.
fn negative(s: &str, what: &str) -> Result<(), String> {
    if s.trim().starts_with('-') {
        Err(format!("`{}` is negative: expected {what}", s.trim()))
    } else {
        Ok(())
    }
}

/// A size in bytes: see the module doc.
pub fn size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    negative(s, "a size like 65536, 64KiB or 1MiB")?;
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| "expected a size like 65536, 64KiB or 1MiB".to_string())?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => return Err(format!("unknown size unit `{other}`; use KiB, MiB or GiB")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| "size too large".to_string())
}

/// A size of at least one byte that fits `usize`.
pub fn positive_size(s: &str) -> Result<usize, String> {
    match size(s)? {
        0 => Err("must be at least 1 byte".into()),
        n => usize::try_from(n).map_err(|e| e.to_string()),
    }
}

/// An HTTP/2 window: a size of at most 2^31-1 bytes.
pub fn window(s: &str) -> Result<u32, String> {
    let n = size(s)?;
    u32::try_from(n)
        .ok()
        .filter(|&w| w <= shardpool::server::MAX_WINDOW)
        .ok_or_else(|| format!("{n} is larger than HTTP/2's largest window, 2^31-1 bytes"))
}

/// A whole number (`usize`, `u64`, ...); a negative one is named as such.
pub fn count<T: FromStr>(s: &str) -> Result<T, String> {
    let s = s.trim();
    negative(s, "a whole number, 0 or more")?;
    s.parse().map_err(|_| "expected a whole number".to_string())
}

/// Requests per second of an open loop: more than 0, at most 100 million (beyond any machine
/// this runs on, and small enough that the schedule's arithmetic cannot overflow).
pub fn rate(s: &str) -> Result<f64, String> {
    let t = s.trim();
    negative(t, "requests per second, more than 0")?;
    match t.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 && r <= 1e8 => Ok(r),
        Ok(_) => Err(format!(
            "`{s}` requests per second: give more than 0 and at most 100000000"
        )),
        Err(_) => Err(format!("`{s}` is not a number of requests per second")),
    }
}

/// A whole number of at least 1.
pub fn positive_count<T: FromStr + PartialEq + Default>(s: &str) -> Result<T, String> {
    match count(s)? {
        n if n == T::default() => Err("must be at least 1".to_string()),
        n => Ok(n),
    }
}

/// `off`/`none` (`None`) or a whole number.
pub fn opt_count(s: &str) -> Result<Option<usize>, String> {
    if matches!(s.trim(), "off" | "none") {
        Ok(None)
    } else {
        count(s).map(Some)
    }
}

/// `auto` (`None`) or a whole number of streams.
pub fn max_streams(s: &str) -> Result<Option<u32>, String> {
    if s.trim() == "auto" {
        Ok(None)
    } else {
        count(s).map_err(|e| format!("{e}, or auto")).map(Some)
    }
}

/// A boolean: see the module doc.
pub fn bool(s: &str) -> Result<bool, String> {
    match s.trim() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

/// An address: `IP:PORT`, or a bare `PORT` meaning `127.0.0.1:PORT`.
pub fn addr(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse().map_err(|e| {
        format!("{e}; expected IP:PORT like 127.0.0.1:50051, or a bare PORT (127.0.0.1)")
    })
}

/// `off`/`none` (`None`) or an [`addr`].
pub fn opt_addr(s: &str) -> Result<Option<SocketAddr>, String> {
    if matches!(s.trim(), "off" | "none") {
        Ok(None)
    } else {
        addr(s).map(Some).map_err(|e| format!("{e}, or off"))
    }
}

/// A target to connect to: an [`addr`], or `HOST:PORT` resolved by name (the library's
/// [`shardpool::bench::resolve_target`]).
pub fn target(s: &str) -> Result<SocketAddr, String> {
    addr(s).or_else(|_| shardpool::bench::resolve_target(s))
}

/// A value of a clap `ValueEnum`, any case; the error lists the names.
pub fn enum_value<T: clap::ValueEnum>(s: &str) -> Result<T, String> {
    T::from_str(s.trim(), true).map_err(|_| {
        let names: Vec<String> = T::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value().map(|p| p.get_name().to_string()))
            .collect();
        format!("use one of {}", names.join(", "))
    })
}

/// Rewrites `--flag -5` (and `-f -5`) into `--flag=-5` for every option of `cmd` (and its
/// subcommands) that takes a value, when the value starts with `-` and a digit or `.`: clap
/// would take `-5` for a short flag and say "unexpected argument '-5'"; this way the value
/// reaches its parser, which says what is wrong with it.
pub fn negative_values_as_values(cmd: &clap::Command, args: Vec<OsString>) -> Vec<OsString> {
    let mut out: Vec<OsString> = Vec::with_capacity(args.len());
    let mut cmd = cmd;
    let mut iter = args.into_iter().peekable();
    while let Some(arg) = iter.next() {
        let Some(text) = arg.to_str() else {
            out.push(arg);
            continue;
        };
        // The subcommand is the first argument (`shardpool` has no options before it).
        if let Some(sub) = cmd.find_subcommand(text).filter(|_| out.len() == 1) {
            cmd = sub;
            out.push(arg);
            continue;
        }
        let long = cmd
            .get_arguments()
            .find(|a| {
                a.get_action().takes_values()
                    // Unset (`None`) before clap builds the command: one value.
                    && a.get_num_args().is_none_or(|n| n.min_values() >= 1)
                    && (a.get_long().is_some_and(|l| text.strip_prefix("--") == Some(l))
                        || a.get_short().is_some_and(|c| text == format!("-{c}")))
            })
            .and_then(|a| a.get_long());
        let negative = iter.peek().and_then(|v| v.to_str()).is_some_and(|v| {
            let mut c = v.chars();
            c.next() == Some('-') && c.next().is_some_and(|d| d.is_ascii_digit() || d == '.')
        });
        match (long, negative) {
            (Some(long), true) => {
                let value = iter.next().unwrap_or_default();
                let mut joined = OsString::from(format!("--{long}="));
                joined.push(value);
                out.push(joined);
            }
            _ => out.push(arg),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_spellings() {
        assert_eq!(duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(duration("20").unwrap(), Duration::from_secs(20));
        assert_eq!(duration("10secs").unwrap(), Duration::from_secs(10));
        assert!(duration("5 parsecs").is_err());
        assert!(duration("-5s").unwrap_err().contains("negative"));
        assert_eq!(opt_duration("off").unwrap(), None);
        assert!(opt_positive_duration("0s").unwrap_err().contains("off"));
        assert_eq!(opt_positive_duration("off").unwrap(), None);
        assert_eq!(size("1MiB").unwrap(), 1 << 20);
        assert_eq!(size("64k").unwrap(), 65536);
        assert!(size("12 furlongs").is_err());
        assert!(positive_size("0").unwrap_err().contains("at least 1"));
        assert!(bool("maybe").is_err());
        assert!(
            count::<usize>("-5")
                .unwrap_err()
                .contains("`-5` is negative")
        );
        assert!(
            positive_count::<usize>("0")
                .unwrap_err()
                .contains("at least 1")
        );
        assert_eq!(addr("9100").unwrap(), "127.0.0.1:9100".parse().unwrap());
        assert!(addr("nowhere").unwrap_err().contains("IP:PORT"));
        assert_eq!(opt_addr("off").unwrap(), None);
    }

    #[test]
    fn negative_values_reach_their_parser() {
        use clap::CommandFactory;
        let cmd = super::super::Cli::command();
        let args = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            negative_values_as_values(&cmd, args(&["shardpool", "bench", "-c", "-5", "-q"])),
            args(&["shardpool", "bench", "--connections=-5", "-q"])
        );
        assert_eq!(
            negative_values_as_values(
                &cmd,
                args(&["shardpool", "serve", "--request-timeout", "-1s", "--pin"])
            ),
            args(&["shardpool", "serve", "--request-timeout=-1s", "--pin"])
        );
        // A flag after an option is left alone.
        assert_eq!(
            negative_values_as_values(&cmd, args(&["shardpool", "bench", "-t", "-q"])),
            args(&["shardpool", "bench", "-t", "-q"])
        );
    }
}
