#!/usr/bin/env bash
# Runs every coverage-guided fuzz target (fuzz/) for a bounded time each.
#
#   scripts/fuzz.sh              # 10 s per target (what test-all.sh / CI runs)
#   scripts/fuzz.sh 600          # 10 minutes per target: the longer, documented run
#   scripts/fuzz.sh 60 grpc_unary origin_frames
#
# Needs a nightly toolchain (libFuzzer's instrumentation) and cargo-fuzz, which it installs. Without
# nightly it says so and replays the committed corpus on stable instead (the unit tests
# `fuzzing::tests` and `cli::fuzzing::tests`), so a stable-only machine still checks every input
# ever found. New inputs go to fuzz/target/scratch/, never into the committed corpus; a crash stops
# the run with its input in fuzz/artifacts/<target>/ (docs/security.md, "Fuzzing", says how to turn
# it into a regression seed).
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-10}
shift || true

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    echo "fuzz: no nightly toolchain; replaying the committed corpus on stable instead"
    cargo test --quiet -p shardpool --features full --lib fuzzing
    exec cargo test --quiet -p shardpool-cli --bin shardpool fuzzing
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install --quiet --locked cargo-fuzz
fi

cd fuzz
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list)
cargo +nightly fuzz build -O 2>&1 | grep -E "^error|warning: unused" || true
for t in "${targets[@]}"; do
    mkdir -p "target/scratch/$t"
    printf 'fuzz: %-16s %4ss ... ' "$t" "$secs"
    if out=$(cargo +nightly fuzz run -O "$t" "target/scratch/$t" "corpus/$t" -- \
            -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1 2>&1); then
        echo "$out" | grep -E '^stat::number_of_executed_units' | awk '{print $2 " runs, no crash"}'
    else
        echo "CRASH"
        echo "$out" | grep -E -A25 'panicked|ERROR: ' | head -40
        echo "fuzz: $t crashed; the input is in fuzz/artifacts/$t/" >&2
        exit 1
    fi
done
