#!/usr/bin/env python3
"""Turns criterion results of `benches/pool.rs` into the Markdown tables of docs/benchmarks.md.

Usage: python3 benches/summarize.py TARGET_CRITERION_DIR ROUND [ROUND ...]

Each ROUND is a criterion baseline name saved with `--save-baseline ROUND`. For every benchmark it
takes criterion's median (time per operation per thread) of each round, and prints the median over
rounds. Ratios against the MutexPool baseline and against the fastest peer are computed within each
round (measured side by side) and the median of those per-round ratios is printed, with their range.
"""

import json
import os
import statistics
import sys

PEERS = ["deadpool", "bb8", "r2d2", "qp", "pingora_pool"]
OURS = "sharded"
BASELINE = "mutex_baseline"


def load(root, rounds):
    """{(group, function, param): [median ns per round]} for benchmarks present in every round."""
    found = {}
    for dirpath, _dirs, files in os.walk(root):
        if "estimates.json" not in files:
            continue
        rel = os.path.relpath(dirpath, root).split(os.sep)
        if len(rel) != 4 or rel[3] not in rounds:
            continue
        group, function, param, round_name = rel
        with open(os.path.join(dirpath, "estimates.json")) as f:
            median = json.load(f)["median"]["point_estimate"]
        found.setdefault((group, function, param), {})[round_name] = median
    return {k: [v[r] for r in rounds] for k, v in found.items() if all(r in v for r in rounds)}


def ns(x):
    return f"{x:.1f}" if x < 100 else f"{x:.0f}"


def ratio_cell(ratios):
    med = statistics.median(ratios)
    if len(ratios) == 1:
        return f"{med:.2f}×"
    return f"{med:.2f}× ({min(ratios):.2f}–{max(ratios):.2f})"


def pool_table(data, group, rounds):
    params = sorted({p for (g, _f, p) in data if g == group}, key=int)
    if not params:
        return
    print(f"\n#### `{group}` (ns per checkout+return per thread; median of {len(rounds)} rounds)\n")
    header = ["threads", OURS, BASELINE] + PEERS + ["baseline ÷ ours", "fastest peer ÷ ours"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for p in params:
        row = [p]
        for name in [OURS, BASELINE] + PEERS:
            runs = data.get((group, name, p))
            row.append(ns(statistics.median(runs)) if runs else "–")
        ours = data.get((group, OURS, p))
        base = data.get((group, BASELINE, p))
        row.append(ratio_cell([b / o for b, o in zip(base, ours)]) if ours and base else "–")
        peer_runs = [data[(group, n, p)] for n in PEERS if (group, n, p) in data]
        if ours and peer_runs:
            fastest = [min(r[i] for r in peer_runs) for i in range(len(rounds))]
            best = min(PEERS, key=lambda n: statistics.median(data.get((group, n, p), [float("inf")])))
            row.append(f"{ratio_cell([f / o for f, o in zip(fastest, ours)])} [{best}]")
        else:
            row.append("–")
        print("| " + " | ".join(row) + " |")


def plain_table(data, group, rounds):
    rows = sorted((f, p) for (g, f, p) in data if g == group)
    if not rows:
        return
    print(f"\n#### `{group}` (ns per operation; median of {len(rounds)} rounds, range over rounds)\n")
    print("| benchmark | threads | median ns | range |")
    print("|---|---|---|---|")
    for f, p in rows:
        runs = data[(group, f, p)]
        print(f"| {f} | {p} | {ns(statistics.median(runs))} | {ns(min(runs))}–{ns(max(runs))} |")


def main():
    if len(sys.argv) < 3:
        sys.exit("usage: summarize.py TARGET_CRITERION_DIR ROUND [ROUND ...]")
    root, rounds = sys.argv[1], sys.argv[2:]
    data = load(root, rounds)
    if not data:
        sys.exit(f"no estimates for rounds {rounds} under {root}: run the benches with --save-baseline")
    for group in ["checkout_return_1_key", "checkout_return_64_keys"]:
        pool_table(data, group, rounds)
    for group in ["steal_path", "clock", "idle_stack", "atomic_rmw"]:
        plain_table(data, group, rounds)


if __name__ == "__main__":
    main()
