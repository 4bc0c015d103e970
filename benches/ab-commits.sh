#!/bin/sh
# Measures two commits of the pool micro-benchmarks side by side: builds benches/pool.rs of each
# (from `git archive`, into its own target directory under /tmp), then runs them alternately
# (A, B, A, B, ...) with the same criterion filter, and prints per benchmark the median over rounds
# for each commit and the median (and range) of the per-round ratios A ÷ B (above 1: B is faster).
#
# Usage: benches/ab-commits.sh OLD NEW [ROUNDS] [FILTER]
#   e.g. benches/ab-commits.sh dedcfcc HEAD 3 'checkout_return_1_key/(sharded|qp)/[12]$'
set -eu
[ $# -ge 2 ] || { echo "usage: $0 OLD NEW [ROUNDS] [FILTER]" >&2; exit 2; }
old=$1 new=$2 rounds=${3:-3}
filter=${4:-'checkout_return_(1_key|64_keys)/(sharded|mutex_baseline|qp)/[12]$|idle_stack_pop_push/1|pair_no_expiry'}
cd "$(dirname "$0")/.."
work=${AB_WORK:-/tmp/shardpool-ab}
log="$work/ab.log"
mkdir -p "$work"
: >"$log"
for side in A B; do
    if [ "$side" = A ]; then rev=$old; else rev=$new; fi
    rm -rf "$work/src-$side"
    mkdir -p "$work/src-$side"
    git archive "$rev" | tar -x -C "$work/src-$side"
    (cd "$work/src-$side" && CARGO_TARGET_DIR="$work/target-$side" cargo bench --bench pool --no-run >&2)
done
bench_bin() {
    # The newest bench executable of that side's build.
    ls -t "$work/target-$1"/release/deps/pool-* | grep -v '\.d$' | head -n 1
}
for r in $(seq 1 "$rounds"); do
    for side in A B; do
        echo "== $side r$r $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$log" >&2
        (cd "$work/src-$side" && "$(bench_bin "$side")" --bench --noplot --warm-up-time 0.5 \
            --measurement-time 1 "$filter" 2>&1) >>"$log"
    done
done
python3 - "$log" "$old" "$new" <<'EOF'
import collections, re, statistics, sys
log, old, new = sys.argv[1:]
times = collections.defaultdict(lambda: collections.defaultdict(dict))
side = rnd = name = None
for line in open(log):
    if m := re.match(r"== (A|B) r(\d+)", line):
        side, rnd = m.groups()
        continue
    if m := re.match(r"^([a-z_0-9]+/[a-z_0-9]+/[0-9]+)", line):
        name = m.group(1)
    if (m := re.search(r"time:\s+\[\S+ \S+ (\S+) (\S+)", line)) and name:
        value = float(m.group(1)) * {"ps": 1e-3, "ns": 1, "µs": 1e3, "ms": 1e6}[m.group(2)]
        times[name][side][rnd] = value
print(f"| benchmark | {old} (A) median ns | {new} (B) median ns | A ÷ B per round: median (range) |")
print("|---|---|---|---|")
for name, sides in times.items():
    rounds = sorted(set(sides["A"]) & set(sides["B"]))
    if not rounds:
        continue
    ratios = [sides["A"][r] / sides["B"][r] for r in rounds]
    print(f"| {name} | {statistics.median(sides['A'].values()):.1f} | "
          f"{statistics.median(sides['B'].values()):.1f} | "
          f"{statistics.median(ratios):.2f}× ({min(ratios):.2f}–{max(ratios):.2f}) |")
EOF
