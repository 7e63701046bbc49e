#!/usr/bin/env bash
# Stops the private containerd and anything it left. Reports leftovers, which are bugs.
set -uo pipefail
[ -n "${WSHIM_IN_ENV:-}" ] || { echo "containerd-down: run it inside the environment (make containerd-down)" >&2; exit 1; }
sock=/run/wshim/containerd.sock
status=0
if [ -f /run/wshim/containerd.pid ]; then
  pid=$(cat /run/wshim/containerd.pid)
  if kill -0 "$pid" 2>/dev/null; then
    for ns in $(ctr --address "$sock" namespaces ls -q 2>/dev/null); do
      for t in $(ctr --address "$sock" -n "$ns" tasks ls -q 2>/dev/null); do
        echo "containerd-down: task $ns/$t still there; killing it" >&2
        ctr --address "$sock" -n "$ns" tasks kill -s SIGKILL "$t" >/dev/null 2>&1
        ctr --address "$sock" -n "$ns" tasks delete "$t" >/dev/null 2>&1
      done
      for c in $(ctr --address "$sock" -n "$ns" containers ls -q 2>/dev/null); do
        ctr --address "$sock" -n "$ns" containers delete "$c" >/dev/null 2>&1
      done
    done
    kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null
  fi
  rm -f /run/wshim/containerd.pid
fi
# Only this checkout's shims: another checkout may run its own containerd beside this one.
bin=$(cat /run/wshim/containerd.bin 2>/dev/null || echo "${WSHIM_BIN:-/nonexistent}")
# The node fork server outlives every container by design: stop it, it is no leftover.
pkill -f "^$bin/containerd-shim-wasmedge-v1-daemon node-server" 2>/dev/null && sleep 0.2
left=$(pgrep -f "^$bin/containerd-shim-wasmedge-v1" || true)
if [ -n "$left" ]; then
  echo "containerd-down: shim processes left behind: $left; killing them" >&2
  kill -9 $left 2>/dev/null
  status=1
fi
rm -f "$sock" "$sock.ttrpc"
echo "containerd is down"
exit $status
