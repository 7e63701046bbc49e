#!/usr/bin/env bash
# Density: N sleeping wasm containers at once through the private containerd, all started,
# all RUNNING, then all stopped and removed, with nothing left behind (tasks, containers,
# shim processes, cgroups, rootfs mounts). Measures the time to start and to stop them all
# and the PSS per container at that density, counted as benches/memory.sh does: container
# processes + their shim processes (daemon and fork server) + the node fork server, summed
# and divided by N. Writes target/bench/density.json; benches/report.py prints it.
#
#   N=1000   containers (default 1000)
#   POD=1    all in one pod (one shared shim) instead of one shim per container
#   P=4      ctr commands run in parallel
#   READY_TIMEOUT=300  seconds to wait for every task to be RUNNING
#
# Runs inside the environment against the private containerd (make bench). The environment
# starts from an empty environment, so pass settings through env(1):
#   packaging/env/in-env.sh env N=100 benches/density.sh
set -euo pipefail
[ -n "${WSHIM_IN_ENV:-}" ] || { echo "density: run it inside the environment: make bench" >&2; exit 1; }
repo=$(cd "$(dirname "$0")/.." && pwd)
n=${N:-1000}
pod=${POD:-0}
par=${P:-4}
ready_timeout=${READY_TIMEOUT:-300}
sock=/run/wshim/containerd.sock
ctr="ctr --address $sock"
img=docker.io/wshim-test/sleep:latest
prefix=density-
out=$repo/target/bench
tmp=$repo/target/tmp/density
mkdir -p "$out" "$tmp"
rm -f "$tmp"/* "$out/density.json"   # no stale results if this run fails
layout=separate
[ "$pod" = 1 ] && layout=pod

fail() { echo "density: FAILED: $*" >&2; exit 1; }

bin=$(cat /run/wshim/containerd.bin 2>/dev/null) || fail "the private containerd is not up (make containerd-up)"
cpid=$(cat /run/wshim/containerd.pid 2>/dev/null) || fail "no /run/wshim/containerd.pid"
kill -0 "$cpid" 2>/dev/null || fail "containerd (pid $cpid) is not running"
$ctr version >/dev/null 2>&1 || fail "containerd does not answer at $sock"

# The limits the run relies on, printed so that a failure can be read against them. None is
# raised here: they are host-wide (pid_max, threads-max, inotify) and enough for N=1000
# (about 15 pids per container with one shim each, most of them the daemon's threads; on
# cgroup v1 the OOM watch is an eventfd, not inotify; containerd holds 3 fds per container).
limits() {
  printf 'pid_max=%s threads-max=%s inotify.max_user_instances=%s file-nr=%s containerd nofile=%s nproc=%s\n' \
    "$(cat /proc/sys/kernel/pid_max)" "$(cat /proc/sys/kernel/threads-max)" \
    "$(cat /proc/sys/fs/inotify/max_user_instances)" "$(cut -f1 /proc/sys/fs/file-nr)" \
    "$(awk '/^Max open files/ {print $4}' "/proc/$cpid/limits")" \
    "$(awk '/^Max processes/ {print $3}' "/proc/$cpid/limits")"
}
echo "density: $n containers, layout $layout, $par in parallel; $(limits)"
host_tasks=$(ls -d /proc/[0-9]*/task/[0-9]* 2>/dev/null | wc -l)
pid_max=$(cat /proc/sys/kernel/pid_max)
# Each container costs a container process, and per shim a fork server and a daemon of about
# 13 threads (7 per container in a pod's shim); refuse to start when that cannot fit under pid_max.
need=$((n * 16))
[ "$layout" = pod ] && need=$((n * 8))
[ $((host_tasks + need)) -lt "$pid_max" ] ||
  fail "pid_max $pid_max is too low: $host_tasks tasks run already and $n containers need about $need more"

ids() { seq 0 $((n - 1)) | sed "s/^/$prefix/"; }
ours() { grep -E "^$prefix[0-9]+\$" || true; }
our_tasks() { $ctr tasks ls -q 2>/dev/null | ours; }
our_containers() { $ctr containers ls -q 2>/dev/null | ours; }
# Node-level processes of this checkout: the node fork server ("... node-server PATH") and its
# standby daemon with that daemon's fork server ("... standby PATH"), not yet any pod's.
node_level() { pgrep -f "^$bin/containerd-shim-wasmedge-v1-(daemon|fork-server) (node-server|standby) " || true; }
# Shim processes of this checkout, the node-level ones aside.
our_shims() { local skip; skip=$(node_level); pgrep -f "^$bin/containerd-shim-wasmedge-v1" | grep -vxF "${skip:-none}" || true; }

# Removes every container of ours, whatever state it is in. Used before the run (leftovers of
# an interrupted one) and on every failure path.
sampler=
remove_all() {
  local t c
  t=$(our_tasks)
  if [ -n "$t" ]; then
    echo "$t" | xargs -r -P "$par" -n 1 $ctr tasks kill -s SIGKILL >/dev/null 2>&1 || true
    echo "$t" | xargs -r -P "$par" -n 20 $ctr tasks rm -f >/dev/null 2>&1 || true
  fi
  c=$(our_containers)
  [ -z "$c" ] || echo "$c" | xargs -r -P "$par" -n 20 $ctr containers rm >/dev/null 2>&1 || true
}
cleanup() {
  local rc=$?
  [ -z "$sampler" ] || kill "$sampler" 2>/dev/null || true
  if [ $rc -ne 0 ]; then
    if [ $rc -eq 130 ]; then echo "density: interrupted; cleaning up" >&2; else echo "density: cleaning up after the failure" >&2; fi
    remove_all
    local left
    left=$( (our_tasks; our_containers) | sort -u | wc -l)
    [ "$left" = 0 ] || echo "density: $left containers could not be removed" >&2
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -n "$( (our_tasks; our_containers) | head -1)" ]; then
  echo "density: removing containers left by an earlier run"
  remove_all
fi
$ctr image import --all-platforms "$repo/target/test-bundles/sleep.tar" >/dev/null

mem_used_kb() { awk '/^MemTotal:/ {t=$2} /^MemAvailable:/ {a=$2} END {print t - a}' /proc/meminfo; }
pss_kb() {  # total PSS in kB of the pids on stdin; fails if any is gone
  xargs -r printf '/proc/%s/smaps_rollup\n' | xargs -r awk '/^Pss:/ {s += $2; k++} END {print s + 0, k + 0}'
}
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", b - a}'; }

# System memory in use, sampled through the run, for the peak (the machine is shared: other
# work moves it too, so it is an upper bound on ours).
base_used=$(mem_used_kb)
( while :; do mem_used_kb; sleep 0.5; done ) >"$tmp/mem" &
sampler=$!

# --- start -------------------------------------------------------------------------------
annot=
[ "$layout" = pod ] && annot="--annotation io.kubernetes.cri.sandbox-id=density-pod"
# Each `ctr run -d` writes to its own file, so that a failure can be shown whole.
start_one() {
  # shellcheck disable=SC2086 # $annot is empty or one option and its value
  $ctr run -d --runtime io.containerd.wasmedge.v1 --platform wasi/wasm $annot "$img" "$1" \
    >"$tmp/run-$1.log" 2>&1 </dev/null || echo "$1" >>"$tmp/failed"
}
export -f start_one
export ctr img tmp annot
t0=$(now)
ids | xargs -P "$par" -n 1 bash -c 'start_one "$1"' _
t_started=$(now)
if [ -s "$tmp/failed" ]; then
  first=$(head -1 "$tmp/failed")
  fail "$(wc -l <"$tmp/failed") of $n containers did not start; $first said: $(tail -5 "$tmp/run-$first.log")"
fi

# Every task must be RUNNING (ctr run -d returns after Start, so they should be at once).
deadline=$(( $(date +%s) + ready_timeout ))
while :; do
  $ctr tasks ls 2>/dev/null | awk -v p="$prefix" 'index($1, p) == 1' >"$tmp/tasks"
  running=$(awk '$3 == "RUNNING"' "$tmp/tasks" | wc -l)
  [ "$running" -lt "$n" ] || break
  if [ "$(date +%s)" -ge "$deadline" ]; then
    fail "after ${ready_timeout}s only $running of $n tasks are RUNNING; others: $(awk '$3 != "RUNNING" {print $1 "=" $3}' "$tmp/tasks" | head -5 | tr '\n' ' ')"
  fi
  sleep 1
done
t_running=$(now)
echo "density: $n started in $(elapsed "$t0" "$t_started") s, all RUNNING after $(elapsed "$t0" "$t_running") s"

# --- measure ---------------------------------------------------------------------------------
sleep 2   # let the last ones settle (page faults of a fresh container)
awk '{print $2}' "$tmp/tasks" >"$tmp/container-pids"
# The shims serving our containers: their command line names the container they were started for.
pgrep -af "^$bin/containerd-shim-wasmedge-v1-(daemon|fork-server) " | grep -vE ' (node-server|standby) ' |
  awk -v p="$prefix" '{for (i = 3; i < NF; i++) if ($i == "-id" && index($(i + 1), p) == 1) print $1}' >"$tmp/shim-pids"
node=$(pgrep -f "^$bin/containerd-shim-wasmedge-v1-daemon node-server" || true)
read -r c_kb c_n < <(pss_kb <"$tmp/container-pids")
read -r s_kb s_n < <(pss_kb <"$tmp/shim-pids")
read -r ns_kb _ < <(node_level | pss_kb)
ns_n=$(echo "$node" | grep -c . || true)
read -r cd_kb _ < <(echo "$cpid" | pss_kb)
[ "$c_n" = "$n" ] || fail "PSS read for $c_n container processes, expected $n"
want_shims=$((2 * n))
[ "$layout" = pod ] && want_shims=2
[ "$s_n" = "$want_shims" ] || fail "found $s_n shim processes for our containers, expected $want_shims"
[ "$ns_n" = 1 ] || fail "expected one node fork server, found $ns_n"
# The leftover check below looks for rootfs mounts in containerd's and the node fork server's
# mount namespaces: it must see every running container's there, or it would be blind.
seen=$(cat "/proc/$cpid/mountinfo" ${node:+"/proc/$node/mountinfo"} | grep -cE "/$prefix[0-9]+/rootfs " || true)
[ "$seen" -ge "$n" ] || fail "only $seen rootfs mounts of $n containers seen in containerd's and the node fork server's mount namespaces"
total=$((c_kb + s_kb + ns_kb))
per_kb=$((total / n))
threads=$(cat "$tmp/container-pids" "$tmp/shim-pids" | while read -r p; do ls "/proc/$p/task" 2>/dev/null | wc -l; done | awk '{s += $1} END {print s}')
cd_threads=$(ls "/proc/$cpid/task" | wc -l)
cd_fds=$(ls "/proc/$cpid/fd" | wc -l)
used_at_n=$(mem_used_kb)
echo "density: PSS containers ${c_kb} kB + $s_n shim processes ${s_kb} kB + node fork server and standby ${ns_kb} kB = ${total} kB, $(awk -v k=$per_kb 'BEGIN {printf "%.2f", k / 1024}') MiB per container"
echo "density: our processes' threads $threads; containerd: PSS ${cd_kb} kB, $cd_threads threads, $cd_fds fds"

# --- stop ----------------------------------------------------------------------------------
t1=$(now)
ids | xargs -P "$par" -n 1 $ctr tasks kill -s SIGKILL >"$tmp/kill.log" 2>&1 ||
  fail "ctr tasks kill failed: $(tail -3 "$tmp/kill.log")"
deadline=$(( $(date +%s) + 60 ))
while :; do
  up=$($ctr tasks ls 2>/dev/null | awk -v p="$prefix" 'index($1, p) == 1 && $3 != "STOPPED"' | wc -l)
  [ "$up" -gt 0 ] || break
  [ "$(date +%s)" -lt "$deadline" ] || fail "60 s after SIGKILL, $up tasks are not STOPPED"
  sleep 0.5
done
t_killed=$(now)
ids | xargs -P "$par" -n 20 $ctr tasks rm >"$tmp/rm.log" 2>&1 || fail "ctr tasks rm failed: $(tail -3 "$tmp/rm.log")"
t_deleted=$(now)
ids | xargs -P "$par" -n 20 $ctr containers rm >"$tmp/crm.log" 2>&1 || fail "ctr containers rm failed: $(tail -3 "$tmp/crm.log")"
t_stopped=$(now)

# --- verify nothing is left ----------------------------------------------------------------------
left=$(our_tasks | wc -l); [ "$left" = 0 ] || fail "$left tasks left: $(our_tasks | head -5 | tr '\n' ' ')"
left=$(our_containers | wc -l); [ "$left" = 0 ] || fail "$left containers left: $(our_containers | head -5 | tr '\n' ' ')"
# Shims exit once containerd has shut them down; give the last ones a moment.
deadline=$(( $(date +%s) + 20 ))
while [ -n "$(our_shims)" ] && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.2; done
t_gone=$(now)
shims=$(our_shims)
[ -z "$shims" ] || fail "$(echo "$shims" | wc -l) shim processes left: $(echo "$shims" | head -3 | xargs -r -I{} sh -c 'echo {}: $(tr "\0" " " </proc/{}/cmdline)')"
cg=$(ls -d /sys/fs/cgroup/*/default/"$prefix"* 2>/dev/null || true)
[ -z "$cg" ] || fail "$(echo "$cg" | wc -l) cgroup directories left, e.g. $(echo "$cg" | head -3 | tr '\n' ' ')"
# The shims mount the rootfs in their own mount namespace, which is the node fork server's
# (they are forked from it); that may not be containerd's (after a containerd restart from
# another environment session): look in both.
node=$(pgrep -f "^$bin/containerd-shim-wasmedge-v1-daemon node-server" || true)
for p in $cpid $node; do
  mnt=$(grep -E "/$prefix[0-9]+(/| )" "/proc/$p/mountinfo" || true)
  [ -z "$mnt" ] || fail "$(echo "$mnt" | wc -l) mounts left in the mount namespace of $p ($(tr '\0' ' ' <"/proc/$p/cmdline" | cut -c1-80)), e.g. $(echo "$mnt" | head -2)"
done
kill "$sampler" 2>/dev/null || true; wait "$sampler" 2>/dev/null || true; sampler=
peak_used=$(sort -n "$tmp/mem" | tail -1)
echo "density: $n stopped and removed in $(elapsed "$t1" "$t_stopped") s (killed $(elapsed "$t1" "$t_killed") s, tasks deleted $(elapsed "$t_killed" "$t_deleted") s, containers removed $(elapsed "$t_deleted" "$t_stopped") s; shims gone after $(elapsed "$t1" "$t_gone") s); nothing left"
echo "density: system memory in use: before ${base_used} kB, at $n ${used_at_n} kB, peak ${peak_used} kB"

cat >"$out/density.json" <<EOF
{
  "layout": "$layout",
  "n": $n,
  "parallel": $par,
  "started": $n,
  "running": $n,
  "stopped_cleanly": $n,
  "start_all_s": $(elapsed "$t0" "$t_started"),
  "running_all_s": $(elapsed "$t0" "$t_running"),
  "stop_all_s": $(elapsed "$t1" "$t_stopped"),
  "stop_phases_s": {"kill": $(elapsed "$t1" "$t_killed"), "tasks_rm": $(elapsed "$t_killed" "$t_deleted"), "containers_rm": $(elapsed "$t_deleted" "$t_stopped")},
  "shims_gone_s": $(elapsed "$t1" "$t_gone"),
  "pss_kb": {"containers": $c_kb, "shims": $s_kb, "node_fork_server": $ns_kb, "total": $total, "per_container": $per_kb},
  "shim_processes": $s_n,
  "threads": $threads,
  "containerd": {"pss_kb": $cd_kb, "threads": $cd_threads, "fds": $cd_fds},
  "system_mem_used_kb": {"before": $base_used, "at_n": $used_at_n, "peak": $peak_used}
}
EOF
echo "density: wrote $out/density.json"
