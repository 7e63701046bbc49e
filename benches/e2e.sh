#!/usr/bin/env bash
# End-to-end cold start through the private containerd, all runtimes in one run (interleaved):
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

# The machine is shared and its load drifts over minutes: a command timed in one block of 30
# runs and another in a later block would compare two different machines. So the runs are
# interleaved: $rounds rounds, each timing every command $per_round times (hyperfine runs one
# command's runs back to back), the order rotated each round; the times are then merged.
rounds=${ROUNDS:-6}
per_round=$(( (runs + rounds - 1) / rounds ))
names=(ours-image ours-rootfs runc-native crun-native crun-wasmedge runc-image crun-image crun-wasmedge-image)
cmds=(
  "$ctr run --rm --runtime io.containerd.wasmedge.v1 --platform wasi/wasm docker.io/wshim-test/hello:latest bench-a"
  "$ctr run --rm --runtime io.containerd.wasmedge.v1 --rootfs $b/native/rootfs-wasm bench-b /hello.wasm"
  "$ctr run --rm --runtime io.containerd.runc.v2 --rootfs $b/native/rootfs bench-c /hello"
  "$ctr run --rm --runtime io.containerd.runc.v2 --runc-binary $wrap --rootfs $b/native/rootfs bench-d /hello"
  "$ctr run --rm --runtime io.containerd.runc.v2 --runc-binary $wrap --annotation module.wasm.image/variant=compat --rootfs $b/native/rootfs-wasm bench-e /hello.wasm"
  "$ctr run --rm --runtime io.containerd.runc.v2 $native_img bench-f"
  "$ctr run --rm --runtime io.containerd.runc.v2 --runc-binary $wrap $native_img bench-g"
  "$ctr run --rm --runtime io.containerd.runc.v2 --runc-binary $wrap --annotation module.wasm.image/variant=compat $wasm_linux_img bench-h"
)
rm -f "$out"/e2e-round-*.json
for r in $(seq 0 $((rounds - 1))); do
  args=()
  for k in $(seq 0 $((${#names[@]} - 1))); do
    j=$(( (k + r) % ${#names[@]} ))
    args+=(-n "${names[$j]}" "${cmds[$j]}")
  done
  echo "round $((r + 1)) of $rounds"
  hyperfine --runs "$per_round" --warmup 1 --export-json "$out/e2e-round-$r.json" --style none "${args[@]}"
done
# Merge: every command's times from all rounds (JSON::PP is in perl's core).
perl -MJSON::PP -e '
  my (%times, @order);
  for my $f (@ARGV) {
    open my $fh, "<", $f or die "$f: $!"; local $/; my $d = decode_json(<$fh>);
    for my $r (@{$d->{results}}) { push @order, $r->{command} unless $times{$r->{command}}; push @{$times{$r->{command}}}, @{$r->{times}} }
  }
  my @res = map { my @t = sort { $a <=> $b } @{$times{$_}}; { command => $_, times => $times{$_}, median => $t[int(@t / 2)] } } sort @order;
  print JSON::PP->new->canonical->encode({ results => \@res, rounds => scalar @ARGV });
' "$out"/e2e-round-*.json >"$out/e2e.json"
# Each command's median, in the order of `names`.
perl -MJSON::PP -e 'local $/; my %r = map { $_->{command} => $_ } @{decode_json(<STDIN>)->{results}};
  printf "  %-20s median %6.1f ms over %d runs\n", $_, $r{$_}{median} * 1000, scalar @{$r{$_}{times}} for @ARGV' "${names[@]}" <"$out/e2e.json"
