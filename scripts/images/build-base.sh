#!/usr/bin/env bash
# Builds the `base` image: busybox from Debian's busybox-static, its applet
# links, a minimal /etc. Output: OUT/base/rootfs and OUT/base.tar.zst.
# Instant when nothing changed (script + busybox binary hashed).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/common.sh"
out=${1:?usage: build-base.sh OUTDIR}
mkdir -p "$out"
busybox=/bin/busybox
[ -x "$busybox" ] && "$busybox" --list >/dev/null 2>&1 ||
  { echo "build-base: $busybox missing (apt-get install busybox-static)" >&2; exit 1; }

hash=$(inputs_hash "$here/build-base.sh" "$here/common.sh" "$busybox")
if up_to_date base "$hash" "$out"; then
  echo "base: up to date ($out/base.tar.zst)"; exit 0
fi
build_lock base "$out"
if up_to_date base "$hash" "$out"; then
  echo "base: up to date ($out/base.tar.zst), built by a concurrent run"; exit 0
fi

staging=$(mktemp -d "$out/.base.XXXXXX")
trap 'rm -rf "$staging"' EXIT
r=$staging
mkdir -p "$r"/{bin,sbin,usr/bin,usr/sbin,etc,root,work,tmp,proc,sys,dev,home,var/tmp,run}
cp "$busybox" "$r/bin/busybox"
chmod 0755 "$r/bin/busybox"
# Relative links keep the rootfs valid wherever it is mounted or unpacked.
"$busybox" --list-full | sort | while read -r applet; do
  [ "$applet" = bin/busybox ] && continue
  dir=$(dirname "$applet")
  if [ "$dir" = . ]; then target=bin/busybox
  elif [ "$dir" = bin ]; then target=busybox
  else target=$(printf '%s' "$dir" | sed 's|[^/]*|..|g')/bin/busybox; fi
  ln -sf "$target" "$r/$applet"
done
cat > "$r/etc/passwd" <<'P'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
P
cat > "$r/etc/group" <<'G'
root:x:0:
nogroup:x:65534:
G
printf 'hosts: files dns\n' > "$r/etc/nsswitch.conf"
printf '127.0.0.1 localhost\n::1 localhost\n' > "$r/etc/hosts"
chmod 1777 "$r/tmp" "$r/var/tmp"
chmod 0700 "$r/root"
chmod 0755 "$r" "$r/work"
trap - EXIT
finish base "$hash" "$out" "$staging"
