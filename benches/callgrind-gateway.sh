#!/usr/bin/env bash
# Instructions per SayHello of `shardpool serve` in gateway mode, counted by callgrind: the
# request path through the pool to one external origin. Compare builds by the `tasks` line
# (see benches/callgrind-server.sh): at the default load it repeated to within 0.2% over five
# runs of each of two builds, while the total moved by up to 8%.
#
#   benches/callgrind-gateway.sh BINARY [serve flags...]
#   CALLGRIND_KEEP=/tmp/gw benches/callgrind-gateway.sh target/release/shardpool
#
# benches/callgrind-server.sh does the counting (two runs, warm-up and warm-up + N requests,
# the difference over N). This script adds what makes a gateway's count repeatable:
# - One origin (`BINARY origin`, or CALLGRIND_ORIGIN_BIN's) on CPU 0, NOT under valgrind
#   (embedded origins hang under it), listening on CALLGRIND_ORIGIN_PORT (default 51999) and
#   shared by both runs.
# - Little runs by the clock: active health checks off, pooled connections never expire (pool
#   idle timeout off) and are never peeked before reuse (validate-after 1h). What is left (the
#   gateway's 100 ms maintenance tick on the shard, the server's connection watchdog and
#   keepalive timers) has no flag to stop it and costs little per tick.
# - One client connection and one stream at a time by default (CALLGRIND_CONNS=1,
#   CALLGRIND_STREAMS=1): every request is one read, one upstream exchange on the one pooled
#   connection (made by the first warm-up request) and one write, not a batch whose size
#   depends on timing. The shard still sleeps 0.7-1.5 times per request depending on timing,
#   which is why the total moves and `tasks` does not. With 8 x 8 the shard almost never
#   sleeps (~0.01 per request) and the pool's 64 connections are all made in the warm-up
#   (UpstreamManager::connect counted the same in both runs of 50f73f4), but requests per read vary:
#   totals of one binary were 0.06% apart in one pair of runs and 1.5% in another, and `tasks`
#   moved by 1.2%. CALLGRIND_RPS paces the requests (h2load --rps); that fixes the sleeps per
#   request, not the reactor's share.
# These are set as SHARDPOOL_* variables, so serve flags given here override them; the rest are
# the binary's defaults.
set -euo pipefail
here=$(dirname "$(realpath "$0")")
bin=$(realpath "$1")
origin_bin=$(realpath "${CALLGRIND_ORIGIN_BIN:-$1}")
oport=${CALLGRIND_ORIGIN_PORT:-51999}
if (exec 3<>"/dev/tcp/127.0.0.1/$oport") 2>/dev/null; then
    echo "port $oport is in use (an origin left over?); set CALLGRIND_ORIGIN_PORT" >&2
    exit 1
fi
log=$(mktemp)
taskset -c 0 "$origin_bin" origin --listen "127.0.0.1:$oport" > "$log" 2>&1 &
origin=$!
trap 'kill "$origin" 2>/dev/null || true; wait "$origin" 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$oport") 2>/dev/null; then break; fi
    sleep 0.1
done
export SHARDPOOL_UPSTREAM=auto
export SHARDPOOL_BACKEND="127.0.0.1:$oport"
export SHARDPOOL_HEALTH_INTERVAL=off
export SHARDPOOL_POOL_IDLE_TIMEOUT=off
export SHARDPOOL_VALIDATE_AFTER=1h
export CALLGRIND_CONNS=${CALLGRIND_CONNS:-1}
export CALLGRIND_STREAMS=${CALLGRIND_STREAMS:-1}
"$here/callgrind-server.sh" "$@"
