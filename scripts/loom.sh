#!/usr/bin/env bash
# The loom proof of the pool protocol (docs/protocol.md), in one command:
#   1. every model in loom-tests/tests/ against the real, instrumented idle stack;
#   2. every model against the linearizable stand-in (a loom Mutex<VecDeque>);
#   3. each seeded bug (a deliberately broken protocol, cfg shardpool_seeded_bug) must make its
#      model fail, for the reason the bug breaks.
# Prints "loom: N passed, M failed" and exits non-zero on any unexpected outcome.
#
# Usage: ./scripts/loom.sh
# Env:   LOOM_MAX_PREEMPTIONS (default 3): loom's preemption bound for every model.
#        LOOM_ONLY=models|bugs: run one half only.
#        LOOM_NO_CAPS=1: lift the caps two models put on the bound for CI (their files say why).
# Each configuration builds the pool core alone (no tokio, hyper or glommio) into its own
# target/loom-* directory, so switching RUSTFLAGS never invalidates another build or the
# default target directory.
set -uo pipefail
cd "$(dirname "$0")/.."

export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-3}"
# Release code runs loom's exploration ~20x faster than debug; without thin LTO and debuginfo (the
# workspace's release profile) nine test binaries link in seconds instead of minutes.
export CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_DEBUG=0
export RUST_BACKTRACE=0

# bug | model that must catch it | what the failure must say
SEEDED_BUGS=(
    "release_before_drop|freed_permit_wakes_waiter|invariant 1 broken"
    "permit_before_vacate|freed_permit_wakes_waiter|no free node while holding a permit"
    "no_permit_flag|freed_permit_wakes_waiter|deadlock"
    "drain_before_flag|close_vs_return|invariant 5 broken"
    "steal_skips_expiry|expiry_vs_steal|invariant 6 broken"
    "stack_relaxed|steal_vs_owner|Causality violation"
    "handoff_unlocked|two_waiters|a queued waiter's slot is Waiting"
    "remove_skips_close|remove_key_vs_return|outlived the removal"
    "leftover_forgotten|dropped_waiter_vs_handoff|invariant 3 broken"
    "total_unlocked|total_cap_two_keys|invariant 7 broken"
    "total_release_silent|total_cap_two_keys|deadlock"
    "grow_silent|resize_grow|deadlock"
    "over_pushes|resize_shrink|invariant 8 broken"
    "resize_skips_takers|resize_shrink_total|invariant 8 broken"
)

passed=0
failed=0
started=$SECONDS
logs=target/loom-logs
mkdir -p "$logs"

pass() { passed=$((passed + 1)); printf '  ok    %s\n' "$*"; }
fail() { failed=$((failed + 1)); printf '  FAIL  %s\n' "$*"; }

# cargo test of loom-tests with the given RUSTFLAGS and target dir; extra args follow.
loom_test() {
    local target=$1 flags=$2
    shift 2
    RUSTFLAGS="$flags" CARGO_TARGET_DIR="$target" \
        cargo test -p loom-tests --release --no-fail-fast "$@"
}

# Every model against one stand-in: each must pass, and every model file must have run.
run_models() {
    local name=$1 target=$2 flags=$3 log="$logs/$1.log"
    local t0=$SECONDS
    echo "==> models against the $name (RUSTFLAGS=\"$flags\")"
    if ! loom_test "$target" "$flags" --no-run >"$log" 2>&1; then
        fail "$name: the loom build did not compile (see $log)"
        tail -n 30 "$log"
        return
    fi
    loom_test "$target" "$flags" -- --nocapture >>"$log" 2>&1
    local model
    for file in loom-tests/tests/*.rs; do
        model=$(basename "$file" .rs)
        # The harness prints this line only after loom explored the model without a failure.
        if grep -q "^loom model $model: " "$log"; then
            pass "$name: $model ($(grep "^loom model $model: " "$log" | cut -d' ' -f4) executions)"
        else
            fail "$name: $model (see $log)"
            grep -A 12 -- "---- .* stdout ----" "$log" | head -n 40
        fi
    done
    echo "    ($((SECONDS - t0)) s)"
}

# One seeded bug: the build must compile, and its model must fail with the expected message.
run_seeded_bug() {
    local bug=$1 model=$2 expect=$3 log="$logs/bug-$1.log"
    local target="target/loom-bug-$bug" flags="--cfg shardpool_loom --cfg shardpool_seeded_bug=\"$bug\""
    local t0=$SECONDS
    if ! loom_test "$target" "$flags" --test "$model" --no-run >"$log" 2>&1; then
        fail "seeded bug $bug: did not compile (see $log)"
        return
    fi
    if loom_test "$target" "$flags" --test "$model" >>"$log" 2>&1; then
        fail "seeded bug $bug: model $model PASSED on the broken protocol (it has no teeth)"
    elif grep -q -- "$expect" "$log"; then
        pass "seeded bug $bug: $model fails with \"$expect\" ($((SECONDS - t0)) s)"
    else
        fail "seeded bug $bug: $model failed, but not with \"$expect\" (see $log)"
        grep -m 3 -A 2 "panicked at" "$log"
    fi
}

only=${LOOM_ONLY:-all}
case $only in
    all | models | bugs) ;;
    *) echo "loom.sh: LOOM_ONLY must be models or bugs, not '$only'" >&2; exit 2 ;;
esac
if [ "$only" != bugs ]; then
    run_models "instrumented stack" target/loom "--cfg shardpool_loom"
    run_models "mutex model" target/loom-model "--cfg shardpool_loom --cfg shardpool_loom_model_stack"
fi
if [ "$only" != models ]; then
    echo "==> seeded bugs (each must fail its model)"
    for entry in "${SEEDED_BUGS[@]}"; do
        IFS='|' read -r bug model expect <<<"$entry"
        run_seeded_bug "$bug" "$model" "$expect"
    done
fi

echo
echo "loom: $passed passed, $failed failed (LOOM_MAX_PREEMPTIONS=$LOOM_MAX_PREEMPTIONS, $((SECONDS - started)) s)"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
