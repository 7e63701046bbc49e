#!/usr/bin/env python3
"""Prints the bench results against the issue-5 targets, from target/bench/*.json:

- e2e.json (benches/e2e.sh, hyperfine): `ctr run --rm` of a hello program, as ratios, from
  images and from rootfs directories.
  All its rows come from one run on one machine, interleaved in rounds, so only their ratios
  mean anything.
- shim_cold_start.json (cargo bench --bench shim): Create(+Start) → `_start` entered, p50/p99.
- stress.json (wshim-stress): create+start+wait+delete throughput through the Task API;
  stress-pod-namespaces.json the same with the pod's network/IPC/UTS namespaces joined.
- density.json (benches/density.sh): N sleeping wasm containers at once, PSS per container.

Usage: report.py [DIR] (default: target/bench of this checkout). Prints every section it has
data for; exits 1 if a file is missing.
"""
import json
import statistics
import sys
from pathlib import Path

out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "target/bench"
problems = []


def load(name):
    p = out / name
    if not p.exists():
        problems.append(f"{p} is missing")
        return None
    return json.loads(p.read_text())


def verdict(ok):
    return "meets" if ok else "misses"


def e2e(data):
    results = {r["command"]: r for r in data["results"]}
    image_rows = ["ours-image", "runc-image", "crun-image", "crun-wasmedge-image"]
    rootfs_rows = ["ours-rootfs", "runc-native", "crun-native", "crun-wasmedge"]
    missing = set(image_rows + rootfs_rows) - results.keys()
    if missing:
        problems.append(f"e2e.json lacks {sorted(missing)}")
        return

    def median(name):
        return statistics.median(results[name]["times"])

    runs = len(results["ours-image"]["times"])
    rounds = data.get("rounds", 1)
    print(f"`ctr run --rm` of a hello program, {runs} runs each, interleaved in {rounds} rounds of one run; ratios of medians")
    for title, rows in [("from images (containerd prepares and mounts a snapshot)", image_rows),
                        ("from a rootfs directory (`--rootfs`, no snapshot)", rootfs_rows)]:
        refs = rows[1:]
        print()
        print(f"{title}:")
        print()
        print("| runtime | " + " | ".join(f"÷ {r}" for r in refs) + " |")
        print("|---|" + "---|" * len(refs))
        for name in rows:
            print(f"| {name} | " + " | ".join(f"{median(name) / median(r):.2f}×" for r in refs) + " |")
    print()
    # The issue-5 targets, like against like: our image against the same program's image
    # under the other runtimes, and our rootfs run against theirs.
    for ours, native, wasm in [("ours-image", "crun-image", "crun-wasmedge-image"), ("ours-rootfs", "crun-native", "crun-wasmedge")]:
        for ref, target in [(native, 0.5), (wasm, 0.3)]:
            ratio = median(ours) / median(ref)
            print(f"{ours} / {ref} = {ratio:.2f} ({verdict(ratio <= target)} the issue-5 target of at most {target})")
    print()


def shim_level(cold, stress, stress_pod_ns):
    print("Shim level (issue 5), this machine, one run each")
    print()
    print("| figure | measured | target | verdict |")
    print("|---|---|---|---|")
    if cold:
        w = cold["warm_shim_aot_cached"]
        n = cold["new_pod"]
        print(f"| Create+Start → `_start` entered, warm shim, AOT cached, p50 ({w['samples']} samples) | {w['p50_ms']:.2f} ms | ≤ 3 ms | {verdict(w['p50_ms'] <= 3)} |")
        print(f"| same, p99 | {w['p99_ms']:.2f} ms | ≤ 10 ms | {verdict(w['p99_ms'] <= 10)} |")
        j = cold.get("warm_shim_aot_cached_pod_namespaces")
        if j:
            print(f"| same, network/IPC/UTS joined from the sandbox as in a Kubernetes pod, p50 / p99 ({j['samples']} samples) | {j['p50_ms']:.2f} / {j['p99_ms']:.2f} ms | ≤ 3 / ≤ 10 ms | {verdict(j['p50_ms'] <= 3 and j['p99_ms'] <= 10)} |")
        print(f"| front start+Create+Start → `_start` entered, new pod, p50 ({n['samples']} samples) | {n['p50_ms']:.2f} ms | ≤ 10 ms | {verdict(n['p50_ms'] <= 10)} |")
    if stress and "warm_pod" in stress:
        s = stress["warm_pod"]
        print(f"| create+start+wait+delete, one warm shim, {s['tasks']} tasks, concurrency {s['concurrency']} | {s['tasks_per_s']:.0f} tasks/s | ≥ 500 tasks/s | {verdict(s['tasks_per_s'] >= 500)} |")
    if stress_pod_ns and "warm_pod" in stress_pod_ns:
        s = stress_pod_ns["warm_pod"]
        print(f"| same, network/IPC/UTS joined from the sandbox as in a Kubernetes pod | {s['tasks_per_s']:.0f} tasks/s | ≥ 500 tasks/s | {verdict(s['tasks_per_s'] >= 500)} |")
    if stress and "fresh_pod" in stress:
        s = stress["fresh_pod"]
        print(f"| same, a new pod (shim) per task, {s['tasks']} tasks, concurrency {s['concurrency']} (no target) | {s['tasks_per_s']:.0f} tasks/s | - | - |")
    print()
    runs = [(stress, "warm_pod", "one warm shim"), (stress, "fresh_pod", "a new pod per task"),
            (stress_pod_ns, "warm_pod", "one warm shim, pod namespaces joined")]
    for data, key, title in runs:
        if not data or key not in data:
            continue
        s = data[key]
        lat = s["latency_ms"]
        print(f"stress, {title}: per task p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms; per call p50 / p99 / mean (ms):")
        steps = s["steps_ms"]
        print("  " + "; ".join(f"{k} {steps[k]['p50']:.2f} / {steps[k]['p99']:.2f} / {steps[k]['mean']:.2f}" for k in s.get("step_order", list(steps))))
        cpu = s.get("cpu_ms_per_task")
        if cpu:
            per_task = cpu["shim_and_containers_user"] + cpu["shim_and_containers_system"]
            print(f"  CPU per task: shim and container {cpu['shim_and_containers_user']:.2f} ms user + {cpu['shim_and_containers_system']:.2f} ms system,"
                  f" client {cpu['client']:.2f} ms: at most {2000 / (per_task + cpu['client']):.0f} tasks/s on 2 idle cores")
    print()


def density(d):
    n, per_mib = d["n"], d["pss_kb"]["per_container"] / 1024
    print(f"Density, {d['layout']} layout (one shim per container unless 'pod'), {d['parallel']} ctr commands in parallel")
    print()
    print("| row | target | measured | verdict |")
    print("|---|---|---|---|")
    clean = d["started"] == n and d["stopped_cleanly"] == n
    v = verdict(n >= 1000) if clean else "fails"
    print(f"| wasm containers sleeping at once | 1000, all started and all stopped cleanly "
          f"| {n}: {d['started']} started, {d['stopped_cleanly']} stopped cleanly | {v} |")
    print(f"| PSS per sleeping container, shim processes included | ≤ 8 MiB | {per_mib:.2f} MiB at {n} | {verdict(per_mib <= 8)} |")
    print()
    print(f"start all: {d['start_all_s']:.1f} s (all RUNNING after {d['running_all_s']:.1f} s); "
          f"stop and remove all: {d['stop_all_s']:.1f} s; "
          f"PSS: containers {d['pss_kb']['containers'] / 1024:.0f} MiB + shims {d['pss_kb']['shims'] / 1024:.0f} MiB "
          f"+ node fork server {d['pss_kb']['node_fork_server'] / 1024:.0f} MiB; "
          f"system memory in use at peak {d['system_mem_used_kb']['peak'] / 1048576:.1f} GiB "
          f"({d['system_mem_used_kb']['before'] / 1048576:.1f} GiB before)")
    print()


e2e_data = load("e2e.json")
if e2e_data:
    e2e(e2e_data)
cold = load("shim_cold_start.json")
stress = load("stress.json")
stress_pod_ns = load("stress-pod-namespaces.json")
if cold or stress:
    shim_level(cold, stress, stress_pod_ns)
density_data = load("density.json")
if density_data:
    density(density_data)
if problems:
    sys.exit("report: " + "; ".join(problems))
