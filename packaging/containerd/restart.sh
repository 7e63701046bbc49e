#!/usr/bin/env bash
# Restarts the private containerd while its containers and shims run on, as an upgrade or a
# crash of containerd would: the new containerd must find the shims again.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
[ -n "${WSHIM_IN_ENV:-}" ] || { echo "containerd-restart: run it inside the environment" >&2; exit 1; }
pid=$(cat /run/wshim/containerd.pid)
kill "$pid"
for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
if kill -0 "$pid" 2>/dev/null; then echo "containerd-restart: containerd $pid did not stop" >&2; exit 1; fi
rm -f /run/wshim/containerd.sock /run/wshim/containerd.sock.ttrpc
WSHIM_BIN=$(cat /run/wshim/containerd.bin) KEEP_STATE=1 "$here/up.sh"
