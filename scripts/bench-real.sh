#!/usr/bin/env bash
# The real-workload comparison (issue 15) in one command: starts PostgreSQL and Redis on loopback
# (scripts/services.sh), runs benches/real_workloads.rs (shardpool's adapters against
# deadpool-postgres, bb8-postgres, deadpool-redis and bb8-redis, same servers, same run), writes
# the JSON and the Markdown table, and stops the servers again.
#
# Usage: scripts/bench-real.sh [SECONDS_PER_CELL [ROUNDS]]   (defaults 3 and 3; 22 cells a round)
# Output: target/bench-real/real_workloads.{json,md,svg} (the SVG by benches/plot_real.py)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-3}"
rounds="${2:-3}"
out=target/bench-real
mkdir -p "$out"

was_running=0
# (Captured first: `status | grep -q` would fail under pipefail when grep exits early.)
status="$(scripts/services.sh status)"
[[ "$status" == *"postgres: running"*"redis: running"* ]] && was_running=1
scripts/services.sh start
if [[ $was_running == 0 ]]; then
    trap 'scripts/services.sh stop || true' EXIT
fi
eval "$(scripts/services.sh env)"

cargo bench -p shardpool --features real-bench --bench real_workloads -- \
    --seconds "$seconds" --rounds "$rounds" --json "$out/real_workloads.json" | tee "$out/real_workloads.md"
python3 benches/plot_real.py "$out/real_workloads.json" "$out/real_workloads.svg"
echo "bench-real: $out/real_workloads.json, $out/real_workloads.md and $out/real_workloads.svg"
