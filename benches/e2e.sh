#!/usr/bin/env bash
# End-to-end cold start through the private containerd, all runtimes in one hyperfine run:
# `ctr run --rm` of a hello program with our shim, runc native, crun native and
# crun+WasmEdge, each once from an image (containerd prepares a snapshot and mounts it) and
# once from a plain rootfs directory (`--rootfs`, no snapshot). Writes target/bench/e2e.json;
# benches/report.py prints the ratios, image against image and rootfs against rootfs.
# Runs inside the environment (make bench).
set -euo pipefail
[ -n "${WSHIM_IN_ENV:-}" ] || { echo "run it inside the environment: make bench" >&2; exit 1; }
repo=$(cd "$(dirname "$0")/.." && pwd)
b=$repo/target/test-bundles
out=$repo/target/bench
runs=${RUNS:-30}
mkdir -p "$out"
ctr="ctr --address /run/wshim/containerd.sock"
for t in hello hello-native hello-wasm-linux; do $ctr image import --all-platforms "$b/$t.tar" >/dev/null; done
native_img=docker.io/wshim-test/hello-native:latest
wasm_linux_img=docker.io/wshim-test/hello-wasm-linux:latest

# crun refuses this host's hybrid cgroups. As measured for ENVIRONMENT.md, it runs with
# --cgroup-manager=disabled where /sys/fs/cgroup is a cgroup2 mount: the wrapper gives
# each crun call a private mount namespace with cgroup2 mounted over /sys/fs/cgroup (the
# host's cgroup mounts are not touched).
wrap=/run/wshim/crun-unified
cat > "$wrap" <<'WRAP'
#!/bin/sh
exec unshare -m --propagation unchanged /bin/sh -c 'mount --make-rslave / && mount -t cgroup2 none /sys/fs/cgroup && exec crun --cgroup-manager=disabled "$@"' crun "$@"
WRAP
chmod +x "$wrap"

# Each command must work before it is timed.
check() { local name=$1 said; shift; if ! said=$("$@" 2>&1); then echo "bench: $name failed: $said" >&2; exit 1; fi; echo "  $name: $(echo "$said" | head -1)"; }
echo "checking each runtime once:"
check ours-image $ctr run --rm --runtime io.containerd.wasmedge.v1 --platform wasi/wasm docker.io/wshim-test/hello:latest bench-check-1
check ours-rootfs $ctr run --rm --runtime io.containerd.wasmedge.v1 --rootfs "$b/native/rootfs-wasm" bench-check-2 /hello.wasm
check runc $ctr run --rm --runtime io.containerd.runc.v2 --rootfs "$b/native/rootfs" bench-check-3 /hello
check crun $ctr run --rm --runtime io.containerd.runc.v2 --runc-binary "$wrap" --rootfs "$b/native/rootfs" bench-check-4 /hello
check crun-wasmedge $ctr run --rm --runtime io.containerd.runc.v2 --runc-binary "$wrap" --annotation module.wasm.image/variant=compat --rootfs "$b/native/rootfs-wasm" bench-check-5 /hello.wasm
check runc-image $ctr run --rm --runtime io.containerd.runc.v2 $native_img bench-check-6
check crun-image $ctr run --rm --runtime io.containerd.runc.v2 --runc-binary "$wrap" $native_img bench-check-7
check crun-wasmedge-image $ctr run --rm --runtime io.containerd.runc.v2 --runc-binary "$wrap" --annotation module.wasm.image/variant=compat $wasm_linux_img bench-check-8

hyperfine --runs "$runs" --warmup 3 --export-json "$out/e2e.json" --style basic \
  -n ours-image "$ctr run --rm --runtime io.containerd.wasmedge.v1 --platform wasi/wasm docker.io/wshim-test/hello:latest bench-a" \
  -n ours-rootfs "$ctr run --rm --runtime io.containerd.wasmedge.v1 --rootfs $b/native/rootfs-wasm bench-b /hello.wasm" \
  -n runc-native "$ctr run --rm --runtime io.containerd.runc.v2 --rootfs $b/native/rootfs bench-c /hello" \
  -n crun-native "$ctr run --rm --runtime io.containerd.runc.v2 --runc-binary $wrap --rootfs $b/native/rootfs bench-d /hello" \
  -n crun-wasmedge "$ctr run --rm --runtime io.containerd.runc.v2 --runc-binary $wrap --annotation module.wasm.image/variant=compat --rootfs $b/native/rootfs-wasm bench-e /hello.wasm" \
  -n runc-image "$ctr run --rm --runtime io.containerd.runc.v2 $native_img bench-f" \
  -n crun-image "$ctr run --rm --runtime io.containerd.runc.v2 --runc-binary $wrap $native_img bench-g" \
  -n crun-wasmedge-image "$ctr run --rm --runtime io.containerd.runc.v2 --runc-binary $wrap --annotation module.wasm.image/variant=compat $wasm_linux_img bench-h"
