#!/usr/bin/env bash
# Instructions per SayHello of a `shardpool serve` binary, counted by callgrind: repeatable on a
# noisy machine, so a change in the request path can be compared with its base exactly.
#
#   benches/callgrind-server.sh BINARY [serve flags...]
#   benches/callgrind-server.sh target/release/shardpool --upstream none
#
# Method: one shard pinned to CPU 1 under valgrind --tool=callgrind, driven by h2load -c 64 -m 16 -t 1
# with the gRPC headers and a SayHello body. Two runs: 2,000 warm-up requests then SIGTERM, and the
# same plus 20,000 more; the difference of their instruction totals over 20,000 is the cost per
# request with start-up, warm-up and shutdown cancelled out. (callgrind_control -z/-d, used
# before, can hang: the server sleeps in io_uring_enter and never sees valgrind's command.)
# CALLGRIND_KEEP=PREFIX keeps both profiles as PREFIX.0 and PREFIX.<requests> (callgrind_annotate).
# The load's shape: CALLGRIND_CONNS (h2load -c, default 64), CALLGRIND_STREAMS (-m, default 16),
# CALLGRIND_RPS (h2load --rps, requests per second per connection, default unpaced),
# CALLGRIND_WARMUP (default 2000) and CALLGRIND_REQUESTS (the measured difference, default 20000).
# Besides the total it prints per request `tasks`, the instructions under glommio's
# run_task_queues (every task's polling: the request path proper), the rest (mostly the reactor:
# submitting and reaping io_uring entries, timers, sleeping) and `sleeps`, how often the executor
# parked in io_uring_enter. The reactor's share depends on timing: how many times the executor
# loop goes round per request (did a completion arrive before the shard ran out of work?), so it
# moves with the machine's load by a few percent of the total, also at a fixed sleep count
# (paced), while `tasks` repeated to ~0.2% with one request at a time (gateway, five runs):
# compare builds by `tasks`, and by totals only over several runs. With batches (many streams)
# `tasks` moves too, as the requests per read vary.
# The server's own environment passes through, so SHARDPOOL_* variables set defaults that flags
# given here override (benches/callgrind-gateway.sh uses that).
# Needs valgrind and h2load (nghttp2-client).
set -euo pipefail
shopt -s inherit_errexit
bin=$(realpath "$1")
shift
port=${CALLGRIND_PORT:-50999}
n=${CALLGRIND_REQUESTS:-20000}
warmup=${CALLGRIND_WARMUP:-2000}
conns=${CALLGRIND_CONNS:-64}
streams=${CALLGRIND_STREAMS:-16}
rps=${CALLGRIND_RPS:+--rps=$CALLGRIND_RPS}
if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port is in use (a server left over?); set CALLGRIND_PORT" >&2
    exit 1
fi
dir=$(mktemp -d)
# The server runs in a command substitution's subshell: its pid goes through a file, so a failed
# run does not leave it behind.
trap 'kill "$(cat "$dir/pid" 2>/dev/null)" 2>/dev/null || true; rm -rf "$dir"' EXIT
printf '\x00\x00\x00\x00\x07\x0a\x05world' > "$dir/body"
cd "$dir"

# load N: N requests; shows h2load's request and traffic lines (a gRPC error is an HTTP 200
# too, but without a DATA frame: compare `data`) and fails unless all N succeeded.
load() {
    local out
    out=$(taskset -c 0 h2load -n "$1" -c "$conns" -m "$streams" $rps -t 1 -d "$dir/body" \
        -H 'content-type: application/grpc' -H 'te: trailers' \
        "http://127.0.0.1:$port/helloworld.Greeter/SayHello")
    grep -E '^(requests|traffic):' <<< "$out" >&2
    if ! grep -q "^requests: $1 total, $1 started, $1 done, $1 succeeded" <<< "$out"; then
        echo "not every request succeeded; server log:" >&2
        tail -20 "$dir/log" >&2
        return 1
    fi
}

# run EXTRA: total instructions of start-up, the warm-up requests, EXTRA more, and shutdown.
run() {
    rm -f "$dir/cg.out"
    taskset -c 1 valgrind --tool=callgrind --callgrind-out-file="$dir/cg.out" \
        "$bin" serve --listen "127.0.0.1:$port" --shards 1 --placement cpus:1 "$@" > "$dir/log" 2>&1 &
    pid=$!
    echo "$pid" > "$dir/pid"
    for _ in $(seq 1 600); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
        sleep 0.1
    done
    load "$warmup"
    [ "$extra" -gt 0 ] && load "$extra"
    kill -TERM "$pid"
    wait "$pid" || true
    rm -f "$dir/pid"
    [ -n "${CALLGRIND_KEEP:-}" ] && cp "$dir/cg.out" "$CALLGRIND_KEEP.$extra"
    parts "$dir/cg.out"
}

# parts PROFILE: "TOTAL TASKS SLEEPS": all instructions, those under run_task_queues (inclusive),
# and the calls of glommio's Parker::park.
parts() {
    local total tasks sleeps
    total=$(grep -h '^summary:\|^totals:' "$1" | awk '{print $2}' | sort -n | tail -1)
    tasks=$(callgrind_annotate --inclusive=yes --auto=no --threshold=100 "$1" |
        awk '/:glommio::executor::LocalExecutor::run_task_queues \[/ {gsub(",", "", $1); s += $1}
             END {print s + 0}')
    sleeps=$(callgrind_annotate --inclusive=yes --tree=calling --auto=no --threshold=100 "$1" |
        awk '/  >  .*:glommio::parking::Parker::park \(/ {
                 c = $0; sub(/.*\(/, "", c); sub(/x\).*/, "", c); gsub(",", "", c); s += c }
             END {print s + 0}')
    echo "$total $tasks $sleeps"
}

extra=0 base=$(run "$@")
extra=$n full=$(run "$@")
read -r b_total b_tasks b_sleeps <<< "$base"
read -r f_total f_tasks f_sleeps <<< "$full"
echo "instructions per request: $(( (f_total - b_total) / n ))  (Ir $f_total - $b_total over $n requests; $bin $*)"
echo "  tasks per request: $(( (f_tasks - b_tasks) / n ))  (Ir $f_tasks - $b_tasks)"
echo "  reactor and the rest per request: $(( (f_total - f_tasks - b_total + b_tasks) / n ))"
echo "  sleeps per request: $(awk -v f="$f_sleeps" -v b="$b_sleeps" -v n="$n" 'BEGIN {printf "%.3f", (f - b) / n}')  ($f_sleeps - $b_sleeps)"
