#!/usr/bin/env python3
"""Side-by-side report of the last `cargo bench --bench daemon` run.

Reads criterion's estimates (target/criterion/<group>/<bench>/new/) and prints, per
group, the median time per iteration, the resulting operations per second, and the ratio
to the in-process baseline of the same group (or to the fastest entry when there is none).
"""
import json
import pathlib
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/criterion")
if not root.is_dir():
    sys.exit(f"{root} not found: run `cargo bench --bench daemon` first")

for group in sorted(p for p in root.iterdir() if p.is_dir() and p.name != "report"):
    rows = []
    for bench_json in sorted(group.rglob("new/benchmark.json")):
        new = bench_json.parent
        meta = json.loads(bench_json.read_text())
        est = json.loads((new / "estimates.json").read_text())
        median_ns = est["median"]["point_estimate"]
        tp = meta.get("throughput") or {}
        elements = tp.get("Elements") or tp.get("elements") or 1
        ops = elements / (median_ns / 1e9)
        rows.append((meta["function_id"] + (f"/{meta['value_str']}" if meta.get("value_str") else ""), median_ns, elements, ops))
    if not rows:
        continue
    base = next((r for r in rows if r[0] == "in_process"), max(rows, key=lambda r: r[3]))
    print(f"\n## {group.name}\n")
    print(f"| variant | median per iteration | ops per iteration | ops/s | vs {base[0]} |")
    print("|---|---:|---:|---:|---:|")
    for name, median_ns, elements, ops in rows:
        per = f"{median_ns / 1e3:.1f} µs" if median_ns < 1e6 else f"{median_ns / 1e6:.2f} ms"
        print(f"| {name} | {per} | {elements} | {ops:,.0f} | {ops / base[3]:.2f}× |")
