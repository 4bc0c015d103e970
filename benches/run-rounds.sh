#!/bin/sh
# Runs the pool micro-benchmarks (benches/pool.rs) in ROUNDS full passes, saving each pass as a
# criterion baseline r1..rN, logs the load average before and after every pass, then prints the
# Markdown tables of docs/benchmarks.md (medians over passes, per-pass ratios).
#
# Usage: benches/run-rounds.sh [ROUNDS] [extra criterion args, e.g. --warm-up-time 3 --measurement-time 10]
set -eu
rounds=${1:-3}
[ $# -gt 0 ] && shift
cd "$(dirname "$0")/.."
cargo bench --bench pool --no-run
names=""
for i in $(seq 1 "$rounds"); do
    echo "round r$i start $(date -u +%H:%M:%S) $(cut -d' ' -f1-3 /proc/loadavg)" >&2
    cargo bench --bench pool -- --noplot --save-baseline "r$i" "$@" > "target/criterion/pool-r$i.log" 2>&1
    echo "round r$i end   $(date -u +%H:%M:%S) $(cut -d' ' -f1-3 /proc/loadavg)" >&2
    names="$names r$i"
done
grep -h 'note:' target/criterion/pool-r*.log >&2 || true
# shellcheck disable=SC2086
python3 benches/summarize.py target/criterion $names
