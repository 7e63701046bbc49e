#!/usr/bin/env bash
# Build (once) the Debian 13 root that holds WasmEdge 0.14.1, containerd 1.7, runc and crun.
# Idempotent: the root lives outside the checkout, keyed by a hash of this recipe, so a fresh
# clone on the same machine reuses it and a changed recipe builds a new one.
# Prints the root's path on stdout; everything else goes to stderr.
# It never mounts anything on the host: debootstrap and apt run in a private mount namespace.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
base=${WSHIM_ENV_BASE:-/var/cache/wasmedge-shim}
key=$(cat "$here/mkenv.sh" "$here/packages.txt" | sha256sum | cut -c1-16)
root="$base/trixie-$key"
if [ -f "$root/.wshim-ready" ]; then echo "$root"; exit 0; fi

[ "$(id -u)" = 0 ] || { echo "mkenv: must run as root" >&2; exit 1; }
mkdir -p "$base"
exec 9>"$base/.lock"
flock 9
if [ -f "$root/.wshim-ready" ]; then echo "$root"; exit 0; fi

if ! command -v debootstrap >/dev/null; then
  echo "mkenv: installing debootstrap on the host" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >&2
fi

tmp="$root.partial"
rm -rf "$tmp"
echo "mkenv: debootstrap trixie into $tmp" >&2
debootstrap --variant=minbase trixie "$tmp" http://deb.debian.org/debian >&2
# The registries are reached through a proxy whose CA only the host trusts.
mkdir -p "$tmp/etc/ssl/certs"
cp /etc/ssl/certs/ca-certificates.crt "$tmp/etc/ssl/certs/ca-certificates.crt"
pkgs=$(grep -v '^#' "$here/packages.txt" | tr '\n' ' ')
echo "mkenv: apt-get install $pkgs" >&2
unshare -m --propagation private chroot "$tmp" /bin/sh -c "
  mount -t proc proc /proc &&
  apt-get update -qq &&
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $pkgs &&
  cp /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt.host 2>/dev/null; apt-get clean" >&2
# apt's ca-certificates may rewrite the bundle: put the host's back.
cp /etc/ssl/certs/ca-certificates.crt "$tmp/etc/ssl/certs/ca-certificates.crt"
mkdir -p "$tmp/root/.cargo" "$tmp/root/.rustup"
touch "$tmp/.wshim-ready"
mv "$tmp" "$root"
# Older roots are left alone: another checkout (a git worktree on another recipe) may be
# running its containerd in one. `make env-clean` removes all but this one.
echo "$root"
