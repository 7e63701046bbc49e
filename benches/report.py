#!/usr/bin/env python3
"""Prints the end-to-end table from target/bench/e2e.json (hyperfine) as ratios, and the
density rows from target/bench/density.json (benches/density.sh) against their targets.

All rows come from one hyperfine run on one machine, so only their ratios mean anything.
"""
import json
import statistics
import sys
from pathlib import Path

path = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "target/bench/e2e.json")
results = {r["command"]: r for r in json.loads(path.read_text())["results"]}
missing = {"ours-image", "runc-native", "crun-native", "crun-wasmedge"} - results.keys()
if missing:
    sys.exit(f"report: {path} lacks {sorted(missing)}")


def median(name):
    return statistics.median(results[name]["times"])


refs = ["runc-native", "crun-native", "crun-wasmedge"]
print(f"`ctr run --rm` of a hello program, {len(results['ours-image']['times'])} runs each, one hyperfine run; ratios of medians")
print()
print("| runtime | " + " | ".join(f"÷ {r}" for r in refs) + " |")
print("|---|" + "---|" * len(refs))
for name in results:
    print(f"| {name} | " + " | ".join(f"{median(name) / median(r):.2f}×" for r in refs) + " |")
print()
ours = median("ours-image")
for ref, target in [("crun-native", 0.5), ("crun-wasmedge", 0.3)]:
    ratio = ours / median(ref)
    verdict = "meets" if ratio <= target else "misses"
    print(f"ours-image / {ref} = {ratio:.2f} ({verdict} the issue-5 target of at most {target})")

# Density (benches/density.sh): N sleeping wasm containers at once, against issue 5's rows.
density_path = path.parent / "density.json"
print()
if not density_path.exists():
    print(f"density: no results ({density_path} is missing: run benches/density.sh)")
    sys.exit(0)
d = json.loads(density_path.read_text())
n, per_mib = d["n"], d["pss_kb"]["per_container"] / 1024
print(f"Density, {d['layout']} layout (one shim per container unless 'pod'), {d['parallel']} ctr commands in parallel")
print()
print("| row | target | measured | verdict |")
print("|---|---|---|---|")
clean = d["started"] == n and d["stopped_cleanly"] == n
verdict = "meets" if n >= 1000 and clean else "misses" if clean else "fails"
print(f"| wasm containers sleeping at once | 1000, all started and all stopped cleanly "
      f"| {n}: {d['started']} started, {d['stopped_cleanly']} stopped cleanly | {verdict} |")
verdict = "meets" if per_mib <= 8 else "misses"
print(f"| PSS per sleeping container, shim processes included | ≤ 8 MiB | {per_mib:.2f} MiB at {n} | {verdict} |")
print()
print(f"start all: {d['start_all_s']:.1f} s (all RUNNING after {d['running_all_s']:.1f} s); "
      f"stop and remove all: {d['stop_all_s']:.1f} s; "
      f"PSS: containers {d['pss_kb']['containers'] / 1024:.0f} MiB + shims {d['pss_kb']['shims'] / 1024:.0f} MiB "
      f"+ node fork server {d['pss_kb']['node_fork_server'] / 1024:.0f} MiB; "
      f"system memory in use at peak {d['system_mem_used_kb']['peak'] / 1048576:.1f} GiB "
      f"({d['system_mem_used_kb']['before'] / 1048576:.1f} GiB before)")
