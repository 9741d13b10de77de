#!/usr/bin/env bash
# Builds the `python` image: a minimal Debian root file system with python3,
# made by debootstrap from Debian's packages (the mirror apt is configured
# with), stripped of docs, locales and apt lists. Needs root.
# Output: OUT/python/rootfs and OUT/python.tar.zst. Cached by a hash of this
# script, the package list and the suite: a rebuild with nothing changed is
# instant.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/common.sh"
out=${1:?usage: build-python.sh OUTDIR}
suite=${SUITE:-bookworm}
packages=${PACKAGES:-python3,ca-certificates}
mkdir -p "$out"

INPUT_STRINGS="suite=$suite packages=$packages"
hash=$(inputs_hash "$here/build-python.sh" "$here/common.sh")
if up_to_date python "$hash" "$out"; then
  echo "python: up to date ($out/python.tar.zst)"; exit 0
fi
build_lock python "$out"
if up_to_date python "$hash" "$out"; then
  echo "python: up to date ($out/python.tar.zst), built by a concurrent run"; exit 0
fi
[ "$(id -u)" -eq 0 ] || { echo "build-python: debootstrap needs root" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "build-python: apt-get install debootstrap" >&2; exit 1; }
mirror=${MIRROR:-$("$here/apt-mirror.sh" "$suite")}

staging=$(mktemp -d "$out/.python.XXXXXX")
trap 'rm -rf "$staging"' EXIT
echo "python: debootstrap $suite from $mirror (takes a few minutes)"
# A mirror hiccup should not fail a whole CI run: retry once from scratch.
for attempt in 1 2; do
  if debootstrap --variant=minbase --include="$packages" "$suite" "$staging" "$mirror" \
    > "$out/python.debootstrap.log" 2>&1; then
    break
  fi
  tail -20 "$out/python.debootstrap.log" >&2
  [ "$attempt" -eq 2 ] && exit 1
  echo "python: debootstrap failed, retrying once" >&2
  rm -rf "$staging" && mkdir -p "$staging"
done

r=$staging
# Only what runs programs stays: no docs, manuals, locales, apt indexes or
# caches, logs, device nodes (the sandbox makes its own /dev), or host files
# debootstrap copied in.
rm -rf "$r"/usr/share/{doc,man,info,lintian,linda,locale}/* \
       "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/* "$r"/var/cache/debconf/*-old \
       "$r"/var/cache/ldconfig/aux-cache "$r"/var/lib/dpkg/*-old \
       "$r"/var/log/* "$r"/dev/* "$r"/tmp/* "$r"/run/* \
       "$r"/etc/resolv.conf "$r"/etc/hostname "$r"/etc/machine-id
find "$r/var/log" "$r/var/cache" -depth -mindepth 1 -type f -delete 2>/dev/null || true
# Reproducibility: password ages count days since the epoch (the build
# day), and the *- files are backups of the previous state.
day=$((SOURCE_DATE_EPOCH / 86400))
for f in shadow gshadow; do
  [ -f "$r/etc/$f" ] && sed -i -E "s/^([^:]*:[^:]*:)[0-9]+:/\1$day:/" "$r/etc/$f"
done
rm -f "$r"/etc/{passwd,group,shadow,gshadow,subuid,subgid}-
# setuid/setgid bits are useless under no_new_privs and the store drops
# them anyway; the dev rootfs should not carry them either.
find "$r" -xdev -type f -perm /6000 -exec chmod ug-s {} +
mkdir -p "$r/work"
chmod 0755 "$r" "$r/work"
chmod 1777 "$r/tmp"
trap - EXIT
finish python "$hash" "$out" "$staging"
