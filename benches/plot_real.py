#!/usr/bin/env python3
"""Plots the JSON of benches/real_workloads.rs as one SVG (standard library only).

Usage: python3 benches/plot_real.py RESULTS.json OUT.svg

Two panels, one group of bars per scenario and workload, one bar per pool: queries/s (linear),
and p99.9 checkout wait in µs (log scale, so bb8's seconds and the others' milliseconds both show).
"""

import json
import math
import sys
from html import escape

COLORS = {
    "shardpool": "#1f77b4", "shardpool-redis": "#1f77b4",
    "shardpool+reset": "#9ecae1",
    "deadpool": "#ff7f0e", "deadpool-redis": "#ff7f0e",
    "bb8": "#2ca02c", "bb8-redis": "#2ca02c",
}


def panel(cells, groups, value, title, y0, height, log, width):
    out = [f'<text x="10" y="{y0 - 8}" font-size="14" font-weight="bold">{escape(title)}</text>']
    vals = [value(c) for c in cells]
    top = max(vals) if vals else 1
    lo = min(v for v in vals if v > 0) if log else 0
    scale = (lambda v: (math.log10(max(v, lo)) - math.log10(lo) + 0.3) / (math.log10(top) - math.log10(lo) + 0.3)) if log \
        else (lambda v: v / top)
    left, gw = 60, (width - 70) / max(len(groups), 1)
    out.append(f'<line x1="{left}" y1="{y0 + height}" x2="{width - 10}" y2="{y0 + height}" stroke="black"/>')
    for gi, key in enumerate(groups):
        members = [c for c in cells if (c["scenario"], c["workload"]) == key]
        bw = (gw - 10) / max(len(members), 1)
        for mi, c in enumerate(members):
            v = value(c)
            h = max(scale(v) * height, 1)
            x = left + gi * gw + 5 + mi * bw
            out.append(f'<rect x="{x:.1f}" y="{y0 + height - h:.1f}" width="{bw - 2:.1f}" height="{h:.1f}" '
                       f'fill="{COLORS.get(c["pool"], "#999")}"><title>{escape(c["pool"])}: {v:,.1f}</title></rect>')
            out.append(f'<text x="{x + (bw - 2) / 2:.1f}" y="{y0 + height - h - 3:.1f}" font-size="8" '
                       f'text-anchor="middle">{v:,.0f}</text>')
        scen, work = key
        label = f'{scen.split(" / ")[0].replace(" threads x ", "x")} · {work}'
        out.append(f'<text x="{left + gi * gw + gw / 2:.1f}" y="{y0 + height + 14}" font-size="10" '
                   f'text-anchor="middle">{escape(label)}</text>')
    return out


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    cells = json.load(open(sys.argv[1]))
    groups = []
    for c in cells:
        key = (c["scenario"], c["workload"])
        if key not in groups:
            groups.append(key)
    width, height = 1100, 300
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{2 * height + 160}" '
           f'font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>']
    svg += panel(cells, groups, lambda c: c["queries_per_s"], "queries/s (higher is better)",
                 40, height - 40, False, width)
    svg += panel(cells, groups, lambda c: c["wait_us"]["p999"],
                 "p99.9 checkout wait, µs, log scale (lower is better)", height + 60, height - 40, True, width)
    x = 60
    for pool in dict.fromkeys(c["pool"] for c in cells):
        svg.append(f'<rect x="{x}" y="{2 * height + 120}" width="12" height="12" fill="{COLORS.get(pool, "#999")}"/>'
                   f'<text x="{x + 16}" y="{2 * height + 131}" font-size="11">{escape(pool)}</text>')
        x += 140
    svg.append("</svg>")
    with open(sys.argv[2], "w") as f:
        f.write("\n".join(svg) + "\n")


if __name__ == "__main__":
    main()
