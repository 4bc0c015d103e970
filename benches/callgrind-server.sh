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
# CALLGRIND_KEEP=PREFIX keeps both profiles as PREFIX.0 and PREFIX.20000 (callgrind_annotate).
# Needs valgrind and h2load (nghttp2-client).
set -euo pipefail
bin=$(realpath "$1")
shift
port=${CALLGRIND_PORT:-50999}
n=20000
if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port is in use (a server left over?); set CALLGRIND_PORT" >&2
    exit 1
fi
dir=$(mktemp -d)
pid=
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
printf '\x00\x00\x00\x00\x07\x0a\x05world' > "$dir/body"
cd "$dir"

load() {
    taskset -c 0 h2load -n "$1" -c 64 -m 16 -t 1 -d "$dir/body" \
        -H 'content-type: application/grpc' -H 'te: trailers' \
        "http://127.0.0.1:$port/helloworld.Greeter/SayHello" | grep -E '^requests:' >&2
}

# run EXTRA: total instructions of start-up, 2,000 warm-up requests, EXTRA more, and shutdown.
run() {
    rm -f "$dir/cg.out"
    taskset -c 1 valgrind --tool=callgrind --callgrind-out-file="$dir/cg.out" \
        "$bin" serve --listen "127.0.0.1:$port" --shards 1 --placement cpus:1 "$@" > "$dir/log" 2>&1 &
    pid=$!
    for _ in $(seq 1 600); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
        sleep 0.1
    done
    load 2000
    [ "$extra" -gt 0 ] && load "$extra"
    kill -TERM "$pid"
    wait "$pid" || true
    [ -n "${CALLGRIND_KEEP:-}" ] && cp "$dir/cg.out" "$CALLGRIND_KEEP.$extra"
    grep -h '^summary:\|^totals:' "$dir/cg.out" | awk '{print $2}' | sort -n | tail -1
}

extra=0 base=$(run "$@")
extra=$n full=$(run "$@")
echo "instructions per request: $(( (full - base) / n ))  (Ir $full - $base over $n requests; $bin $*)"
