#!/usr/bin/env bash
# Starts the private containerd (inside the Debian 13 environment). Idempotent.
# The freshly built shim is found on containerd's PATH as runtime io.containerd.wasmedge.v1.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${WSHIM_BIN:?WSHIM_BIN: the directory holding containerd-shim-wasmedge-v1}
[ -n "${WSHIM_IN_ENV:-}" ] || { echo "containerd-up: run it inside the environment (make containerd-up)" >&2; exit 1; }
[ -x "$bin/containerd-shim-wasmedge-v1" ] || { echo "containerd-up: $bin/containerd-shim-wasmedge-v1 is not built" >&2; exit 1; }
sock=/run/wshim/containerd.sock
mkdir -p /run/wshim /var/lib/wshim
if [ -S "$sock" ] && ctr --address "$sock" version >/dev/null 2>&1; then
  if [ "$(cat /run/wshim/containerd.bin 2>/dev/null)" = "$bin" ]; then
    echo "containerd is already up at $sock"
    exit 0
  fi
  # Up, but running shims from another checkout: restart it on this one.
  "$here/down.sh"
fi
# State of a containerd that is gone (its mounts died with its namespace) is stale, unless
# this is a restart while its shims run on (restart.sh).
[ -n "${KEEP_STATE:-}" ] || rm -rf /run/wshim/containerd
echo "$bin" > /run/wshim/containerd.bin
sed "s|@BIN@|$bin|g" "$here/config.toml.in" > /run/wshim/containerd.toml
PATH="$bin:$PATH" setsid containerd --config /run/wshim/containerd.toml \
  >/run/wshim/containerd.log 2>&1 </dev/null &
echo $! > /run/wshim/containerd.pid
for _ in $(seq 100); do
  if ctr --address "$sock" version >/dev/null 2>&1; then
    echo "containerd is up at $sock (pid $(cat /run/wshim/containerd.pid)); log: /run/wshim/containerd.log"
    exit 0
  fi
  sleep 0.1
done
echo "containerd did not come up; its log:" >&2
tail -30 /run/wshim/containerd.log >&2
exit 1
