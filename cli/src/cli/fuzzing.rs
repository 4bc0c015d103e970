//! Fuzz target bodies for the binary's parsers of operator input: the `--config` TOML file, the
//! `--backends-file`, and the value parsers every flag, variable and key goes through.
//!
//! The coverage-guided targets in `fuzz/fuzz_targets/` include this module (the binary's code is
//! not a library) and call these; the unit test below replays the committed corpus
//! (`fuzz/corpus/<target>/`) on stable Rust. Compiled only for tests and for fuzzing.

use super::parse;
use super::serve::Knobs;
use super::settings;
use super::upstream_args::{self, UpstreamArgs};
use std::path::Path;

/// `config_toml`: a knob file. It parses or fails with a message; what parses resolves (every
/// value through its parser) or fails with a message naming the key. Keys that name other files
/// (the token, the backends file) are dropped first: fuzzing must not read the file system.
pub fn config_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fuzz.toml");
    let mut file = match settings::parse_config(text, path) {
        Ok(f) => f,
        Err(e) => {
            assert!(!e.is_empty());
            return;
        }
    };
    file.knobs.remove("admin_token_file");
    file.upstream.remove("backends_file");
    if let Err(e) = Knobs::default().resolve(&file) {
        assert!(
            e.contains('`') || e.contains("--"),
            "error names no key: {e}"
        );
    }
    if let Err(e) = UpstreamArgs::default().resolve(&file) {
        assert!(
            e.contains('`') || e.contains("--"),
            "error names no key: {e}"
        );
    }
}

/// `backends_file`: a backends file parses to addresses or fails with a message naming the file.
pub fn backends_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = upstream_args::parse_backends(text, Path::new("fuzz-backends.toml")) {
        assert!(e.contains("fuzz-backends.toml"), "{e}");
    }
}

/// `cli_values`: byte 0 picks a value parser, the rest is the value. None panics; what parses is
/// in range.
pub fn cli_values(data: &[u8]) {
    let [which, rest @ ..] = data else {
        return;
    };
    let Ok(s) = std::str::from_utf8(rest) else {
        return;
    };
    match which % 12 {
        0 => drop(parse::duration(s)),
        1 => assert!(!matches!(parse::positive_duration(s), Ok(d) if d.is_zero())),
        2 => drop(parse::opt_duration(s)),
        3 => drop(parse::size(s)),
        4 => {
            assert!(!matches!(parse::window(s), Ok(w) if w > shardpool::server::MAX_WINDOW))
        }
        5 => drop(parse::count::<usize>(s)),
        6 => drop(parse::bool(s)),
        7 => drop(parse::addr(s)),
        8 => {
            if let Ok(Some(a)) = parse::opt_addr(s) {
                assert!(s.parse::<u16>().is_err() || a.ip().is_loopback());
            }
        }
        9 => drop(parse::max_streams(s)),
        10 => drop(parse::opt_count(s)),
        _ => {
            if let Ok(allow) = s.parse::<shardpool::upstream::allow::BackendAllow>() {
                assert!(!allow.networks().is_empty());
            }
        }
    }
}

/// The targets by name, as `fuzz/fuzz_targets/` and the corpus folders call them.
pub const TARGETS: &[(&str, shardpool::fuzzing::Target)] = &[
    ("config_toml", config_toml),
    ("backends_file", backends_file),
    ("cli_values", cli_values),
];

#[cfg(test)]
mod tests {
    /// Replays every committed corpus file through its target on stable Rust.
    #[test]
    fn corpus_replays_clean() {
        shardpool::fuzzing::replay_corpus(super::TARGETS);
    }
}
