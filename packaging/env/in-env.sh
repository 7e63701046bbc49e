#!/usr/bin/env bash
# Run a command inside the Debian 13 root, as root, with the repository at the same path.
# Everything is mounted inside a private mount namespace, so the host keeps no mounts and
# cgroupfs is only bind-mounted (never remounted or rebound): containers still create their
# cgroups only under their own cgroupsPath.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
root=$("$here/mkenv.sh")
[ $# -gt 0 ] || set -- bash
exec unshare -m --propagation private /bin/bash -euo pipefail -c '
root=$1; repo=$2; shift 2
# "/" of the chroot must be a mount point, or pivot_root and propagation changes fail there.
mount --rbind "$root" "$root"
mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys"
mount --rbind /dev "$root/dev"
mkdir -p "$root$repo" "$root/root/.cargo" "$root/root/.rustup"
mount --bind "$repo" "$root$repo"
[ -d /root/.cargo ] && mount --bind /root/.cargo "$root/root/.cargo"
[ -d /root/.rustup ] && mount --bind /root/.rustup "$root/root/.rustup"
# The private containerd keeps its state under /run/wshim and /var/lib/wshim, and its shims
# their sockets under /run/containerd/s, in the root,
# across sessions. Each checkout gets its own (keyed by its path), so that two checkouts
# (git worktrees) can run their own containerd and tests side by side.
key=$(printf %s "$repo" | sha256sum | cut -c1-12)
for d in run/wshim run/containerd var/lib/wshim; do
  mkdir -p "$root/$d" "$root/$d-$key"
  mount --bind "$root/$d-$key" "$root/$d"
done
# pivot_root, not chroot: the kernel refuses new user namespaces to a chrooted process
# (unshare(CLONE_NEWUSER) gives EPERM), and containers with linux.uidMappings need them.
mkdir -p "$root/.oldroot"
cd "$root"
pivot_root . .oldroot
umount -l /.oldroot
cd "$repo"
exec /usr/bin/env -i \
  HOME=/root PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  TERM="${TERM:-dumb}" CARGO_HOME=/root/.cargo RUSTUP_HOME=/root/.rustup RUSTUP_AUTO_INSTALL=0 \
  WASMEDGE_INCLUDE_DIR=/usr/include WASMEDGE_LIB_DIR=/usr/lib/x86_64-linux-gnu \
  CARGO_TARGET_DIR="$repo/target/env" CI="${CI:-}" WSHIM_IN_ENV=1 \
  /bin/bash -c "cd \"$repo\" && exec \"\$@\"" bash "$@"
' bash "$root" "$repo" "$@"
