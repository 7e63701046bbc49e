#!/usr/bin/env bash
# Memory per sleeping wasm container: the proportional set size (PSS) of every process it
# costs (shim daemon, fork server, container process), summed over N containers and divided
# by N. Two layouts: one shim per container, and one pod (shared shim) of N containers.
# Runs inside the environment against the private containerd (make bench).
set -euo pipefail
[ -n "${WSHIM_IN_ENV:-}" ] || { echo "run it inside the environment: make bench" >&2; exit 1; }
repo=$(cd "$(dirname "$0")/.." && pwd)
n=${N:-10}
ctr="ctr --address /run/wshim/containerd.sock"
$ctr image import --all-platforms "$repo/target/test-bundles/sleep.tar" >/dev/null
img=docker.io/wshim-test/sleep:latest

pss_kb() {  # total PSS in kB of the given pids
  local total=0 p v
  for p in "$@"; do
    v=$(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0)
    total=$((total + ${v:-0}))
  done
  echo $total
}

measure() {  # layout: "separate" or "pod"
  local layout=$1 i ids=() extra=()
  [ "$layout" = pod ] && extra=(--annotation io.kubernetes.cri.sandbox-id=mem-pod-0)
  for i in $(seq 0 $((n - 1))); do
    ids+=("mem-$layout-$i")
    $ctr run -d --runtime io.containerd.wasmedge.v1 --platform wasi/wasm "${extra[@]}" "$img" "mem-$layout-$i" >/dev/null
  done
  sleep 1
  # The containers' processes, and the shim processes (daemon and fork server) serving them.
  local pids=() shims
  for i in "${ids[@]}"; do pids+=("$($ctr tasks ls | awk -v id="$i" '$1 == id {print $2}')"); done
  shims=$(for i in "${ids[@]}"; do pgrep -f "containerd-shim-wasmedge-v1-(daemon|fork-server) .*-id $i " || true; done | sort -u)
  # The node fork server and its standby daemon (shared by every pod on the node) are counted
  # whole, here.
  local node
  node=$(pgrep -f "containerd-shim-wasmedge-v1-(daemon|fork-server) (node-server|standby) " || true)
  local c s ns
  c=$(pss_kb "${pids[@]}")
  s=$(pss_kb $shims)
  ns=$(pss_kb $node)
  echo "$layout: $n containers, $(echo $shims | wc -w) shim processes: PSS containers ${c} kB + shims ${s} kB + node fork server ${ns} kB = $(( (c + s + ns) / n )) kB per container"
  for i in "${ids[@]}"; do $ctr tasks kill -s SIGKILL "$i" >/dev/null 2>&1 || true; done
  sleep 0.5
  for i in "${ids[@]}"; do $ctr tasks rm "$i" >/dev/null 2>&1 || true; $ctr containers rm "$i" >/dev/null 2>&1 || true; done
}

measure separate
measure pod
