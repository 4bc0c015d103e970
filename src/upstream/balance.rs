//! Load-balancing policies over the backends a shard may use.
//!
//! Every policy runs per shard with shard-local state (as Envoy's per-worker balancers do): the
//! round-robin cursor, the random generator and the in-flight counts it compares are the
//! shard's own, so choosing a backend touches no shared cache line.

use std::cell::Cell;
use std::fmt;
use std::str::FromStr;

/// How a shard picks among healthy backends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Balance {
    /// Each backend in turn.
    #[default]
    RoundRobin,
    /// The backend with the fewest requests in flight from this shard (ties: in turn).
    LeastConnections,
    /// Uniformly at random.
    Random,
    /// Two backends at random, the one with fewer requests in flight from this shard.
    PowerOfTwo,
}

impl FromStr for Balance {
    type Err = String;

    /// ```
    /// # use shardpool::upstream::Balance;
    /// assert_eq!("p2c".parse::<Balance>().unwrap(), Balance::PowerOfTwo);
    /// assert!("fastest".parse::<Balance>().unwrap_err().contains("round-robin"));
    /// ```
    fn from_str(s: &str) -> Result<Balance, String> {
        match s {
            "round-robin" | "rr" => Ok(Balance::RoundRobin),
            "least-connections" | "least-conn" => Ok(Balance::LeastConnections),
            "random" => Ok(Balance::Random),
            "power-of-two" | "p2c" => Ok(Balance::PowerOfTwo),
            other => Err(format!(
                "unknown balancing policy `{other}`; use round-robin, least-connections, random \
                 or power-of-two (p2c)"
            )),
        }
    }
}

impl fmt::Display for Balance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Balance::RoundRobin => "round-robin",
            Balance::LeastConnections => "least-connections",
            Balance::Random => "random",
            Balance::PowerOfTwo => "power-of-two",
        })
    }
}

/// A shard's balancing state.
#[derive(Debug)]
pub(crate) struct Picker {
    policy: Balance,
    cursor: Cell<usize>,
    rng: Cell<u64>,
}

impl Picker {
    pub(crate) fn new(policy: Balance, seed: u64) -> Picker {
        Picker {
            policy,
            cursor: Cell::new(seed as usize),
            // xorshift needs a non-zero state.
            rng: Cell::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1),
        }
    }

    fn next_random(&self, n: usize) -> usize {
        let mut x = self.rng.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.set(x);
        ((x >> 32).wrapping_mul(n as u64) >> 32) as usize
    }

    /// The first index at or after `start` (cyclically) for which `ok` holds.
    fn scan(n: usize, start: usize, ok: &impl Fn(usize) -> bool) -> Option<usize> {
        (0..n).map(|i| (start + i) % n).find(|&i| ok(i))
    }

    /// An eligible index drawn uniformly (two passes, no allocation). Scanning from a random
    /// start instead would favour the neighbour of an ineligible backend.
    fn random_eligible(&self, n: usize, ok: &impl Fn(usize) -> bool) -> Option<usize> {
        let eligible = (0..n).filter(|&i| ok(i)).count();
        if eligible == 0 {
            return None;
        }
        (0..n).filter(|&i| ok(i)).nth(self.next_random(eligible))
    }

    /// Picks one of `0..n` for which `ok` holds, using `load(i)` (requests in flight) where the
    /// policy compares loads. `None` when no index is eligible.
    pub(crate) fn pick(
        &self,
        n: usize,
        ok: impl Fn(usize) -> bool,
        load: impl Fn(usize) -> u64,
    ) -> Option<usize> {
        if n == 0 {
            return None;
        }
        match self.policy {
            Balance::RoundRobin => {
                let start = self.cursor.get() % n;
                let i = Self::scan(n, start, &ok)?;
                self.cursor.set(i + 1);
                Some(i)
            }
            Balance::LeastConnections => {
                // Ties go to the first eligible backend after the last one picked, so equal
                // loads degrade to round-robin (no bias towards a neighbour of an ejected one).
                let start = self.cursor.get() % n;
                let i = (0..n)
                    .map(|i| (start + i) % n)
                    .filter(|&i| ok(i))
                    .min_by_key(|&i| load(i))?;
                self.cursor.set(i + 1);
                Some(i)
            }
            Balance::Random => self.random_eligible(n, &ok),
            Balance::PowerOfTwo => {
                let a = self.random_eligible(n, &ok)?;
                let b = self.random_eligible(n, &ok)?;
                Some(if load(b) < load(a) { b } else { a })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(policy: Balance, n: usize, ok: impl Fn(usize) -> bool + Copy) -> Vec<usize> {
        let p = Picker::new(policy, 7);
        let mut c = vec![0; n];
        for _ in 0..10_000 {
            c[p.pick(n, ok, |_| 0).unwrap()] += 1;
        }
        c
    }

    #[test]
    fn every_policy_spreads_and_skips_ineligible() {
        for policy in [
            Balance::RoundRobin,
            Balance::LeastConnections,
            Balance::Random,
            Balance::PowerOfTwo,
        ] {
            let c = counts(policy, 4, |i| i != 2);
            assert_eq!(c[2], 0, "{policy}: picked an ineligible backend");
            for i in [0, 1, 3] {
                assert!((2_800..=3_900).contains(&c[i]), "{policy}: uneven {c:?}");
            }
            let p = Picker::new(policy, 1);
            assert_eq!(p.pick(3, |_| false, |_| 0), None);
            assert_eq!(p.pick(0, |_| true, |_| 0), None);
        }
        // With equal loads, round-robin and least-connections are exact: 10 000 over 3 backends.
        for policy in [Balance::RoundRobin, Balance::LeastConnections] {
            let mut c = counts(policy, 4, |i| i != 2);
            c.sort_unstable();
            assert_eq!(c, vec![0, 3333, 3333, 3334], "{policy}");
        }
    }

    #[test]
    fn load_aware_policies_prefer_the_less_loaded() {
        let loads = [5u64, 0, 9];
        let p = Picker::new(Balance::LeastConnections, 3);
        for _ in 0..10 {
            assert_eq!(p.pick(3, |_| true, |i| loads[i]), Some(1));
        }
        let p = Picker::new(Balance::PowerOfTwo, 3);
        let heavy = (0..3000)
            .filter(|_| p.pick(3, |_| true, |i| loads[i]) == Some(2))
            .count();
        // Index 2 wins only when both draws are 2: about 1/9 of the time.
        assert!(
            heavy < 600,
            "p2c picked the heaviest backend {heavy} times of 3000"
        );
    }
}
