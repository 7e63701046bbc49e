#!/usr/bin/env python3
"""Prints the end-to-end table from target/bench/e2e.json (hyperfine) as ratios.

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
