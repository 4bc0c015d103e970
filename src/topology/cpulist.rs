//! Kernel-style CPU lists (`0-3,8,10-11`): parsing and formatting.

use super::TopologyError;

/// Parses a kernel-style CPU list (`0-3,8,10-11`) into ascending-as-written numbers.
///
/// ```
/// # use shardpool::topology::parse_cpu_list;
/// assert_eq!(parse_cpu_list("0-2,7").unwrap(), vec![0, 1, 2, 7]);
/// assert!(parse_cpu_list("3-1").is_err());
/// ```
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>, TopologyError> {
    let bad = |part: &str| {
        TopologyError::Parse(format!(
            "bad CPU list item `{part}` in `{s}`; expected numbers and ranges like `0-3,8`"
        ))
    };
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let a: usize = a.trim().parse().map_err(|_| bad(part))?;
                let b: usize = b.trim().parse().map_err(|_| bad(part))?;
                if a > b || b - a > 65_536 {
                    return Err(bad(part));
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().map_err(|_| bad(part))?),
        }
    }
    if out.is_empty() {
        return Err(TopologyError::Parse(format!("empty CPU list `{s}`")));
    }
    Ok(out)
}

/// Formats numbers as a compact kernel-style list (`0-3,8`).
pub fn format_cpu_list(list: &[usize]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < list.len() {
        let start = list[i];
        let mut end = start;
        while i + 1 < list.len() && list[i + 1] == end + 1 {
            end += 1;
            i += 1;
        }
        if !out.is_empty() {
            out.push(',');
        }
        if end == start {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}-{end}"));
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::Placement;

    #[test]
    fn cpu_list_round_trip() {
        for s in ["0", "0-3", "0-3,8,10-11", "5,7"] {
            assert_eq!(format_cpu_list(&parse_cpu_list(s).unwrap()), s);
        }
        for bad in ["", "a", "1-", "-1", "4-2", "1,,x"] {
            assert!(parse_cpu_list(bad).is_err(), "{bad:?} should not parse");
        }
        assert_eq!(Placement::Cpus(vec![0, 1, 2, 5]).to_string(), "cpus:0-2,5");
        assert_eq!("all".parse::<Placement>().unwrap(), Placement::AllCores);
    }
}
