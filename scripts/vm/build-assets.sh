#!/usr/bin/env bash
# Builds the microVM guest assets into OUT ($1, build/vm): vmlinuz (Debian's
# cloud kernel, pinned), initramfs.img (the Lockbox agent as /init, its
# shared libraries, the kernel modules it loads, busybox for workloads) and
# assets.json (versions and sha256s). AGENT ($2) is the lockbox-helper
# binary to put in. Cached by input hash: a second run with the same inputs
# does nothing.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$(realpath -m "${1:-$here/../../build/vm}")"
agent="$(realpath "${2:-$here/../../target/release/lockbox-helper}")"
: "${SOURCE_DATE_EPOCH:=1704067200}"

kpkg=linux-image-6.1.0-56-cloud-amd64
kver=6.1.192-2
krel=6.1.0-56-cloud-amd64
# What the agent needs, in load order; each module's own `depends=` is
# loaded before it (resolved below), so the list names intent only.
modules=(virtio_mmio virtio_console virtio_blk erofs overlay virtiofs virtio_net)
busybox=/bin/busybox

sha() { sha256sum "$1" | cut -d' ' -f1; }

[ -x "$agent" ] || { echo "vm-assets: agent binary $agent missing" >&2; exit 1; }
[ -x "$busybox" ] || { echo "vm-assets: $busybox missing (busybox-static)" >&2; exit 1; }
# Only the statically linked busybox can run in the guest without its libs.
file -b "$busybox" 2>/dev/null | grep -q 'static' || ldd "$busybox" 2>&1 | grep -q 'not a dynamic' \
  || { echo "vm-assets: $busybox is not static" >&2; exit 1; }

inputs="$(printf '%s\n' "$kpkg=$kver" "${modules[*]}" "$SOURCE_DATE_EPOCH" \
  "$(sha "$agent")" "$(sha "$busybox")" "$(sha "$0")" "$(sha "$here/mkcpio.py")" \
  "$(ldd "$agent" | awk '/=>/ {print $3}' | xargs -r sha256sum)" | sha256sum | cut -d' ' -f1)"
if [ -f "$out/assets.json" ] && grep -q "\"inputs\": \"$inputs\"" "$out/assets.json" \
  && [ -f "$out/vmlinuz" ] && [ -f "$out/initramfs.img" ]; then
  echo "vm-assets: up to date ($out)"
  exit 0
fi

mkdir -p "$out/cache"
deb="$out/cache/${kpkg}_${kver}_amd64.deb"
if [ ! -f "$deb" ]; then
  (cd "$out/cache" && apt-get download -q "$kpkg=$kver" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
  [ -f "$deb" ] || { echo "vm-assets: could not download $kpkg=$kver" >&2; exit 1; }
fi

work="$(mktemp -d "$out/.work.XXXXXX")"
trap 'rm -rf "$work"' EXIT
dpkg-deb -x "$deb" "$work/k"
kdir="$work/k/lib/modules/$krel/kernel"

# Topological order over the modules' own depends= lists.
declare -A done_=()
order=()
add() {
  local m="$1" f dep
  [ -n "${done_[$m]:-}" ] && return
  done_[$m]=1
  f="$(find "$kdir" -name "$m.ko" -print -quit)"
  [ -n "$f" ] || { echo "vm-assets: module $m not in $kpkg (compressed or missing)" >&2; exit 1; }
  for dep in $(strings "$f" | sed -n 's/^depends=//p' | tr ',' ' '); do add "$dep"; done
  order+=("$m")
}
for m in "${modules[@]}"; do add "$m"; done

manifest="$work/manifest"
{
  for d in dev proc sys run tmp bin lib lib64 lib/lockbox lib/lockbox/modules; do echo "dir /$d 755"; done
  echo "char /dev/console 600 5 1"
  echo "file /init 755 $agent"
  echo "file /bin/busybox 755 $busybox"
  for a in sh echo cat true false sleep ls; do echo "link /bin/$a busybox"; done
  for m in "${order[@]}"; do
    echo "file /lib/lockbox/modules/$m.ko 644 $(find "$kdir" -name "$m.ko" -print -quit)"
  done
  printf '%s\n' "${order[@]}" > "$work/order"
  echo "file /lib/lockbox/modules/order 644 $work/order"
  # The dynamic loader and the agent's libraries at the paths ldd names.
  ldd "$agent" | awk '/=>/ {print $3} /^\t\/lib64/ {print $1}' | while read -r lib; do
    echo "file $lib 755 $(realpath "$lib")"
  done
  for d in /lib/x86_64-linux-gnu; do echo "dir $d 755"; done
} > "$manifest"

python3 "$here/mkcpio.py" "$SOURCE_DATE_EPOCH" < "$manifest" | gzip -n -9 > "$work/initramfs.img"
cp "$work/k/boot/vmlinuz-$krel" "$work/vmlinuz"
mv "$work/vmlinuz" "$out/vmlinuz"
mv "$work/initramfs.img" "$out/initramfs.img"

cat > "$out/assets.json.tmp" <<JSON
{
  "inputs": "$inputs",
  "kernel": {"package": "$kpkg", "version": "$kver", "release": "$krel", "deb_sha256": "$(sha "$deb")", "sha256": "$(sha "$out/vmlinuz")"},
  "initramfs": {"sha256": "$(sha "$out/initramfs.img")", "modules": [$(printf '"%s",' "${order[@]}" | sed 's/,$//')], "agent_sha256": "$(sha "$agent")", "busybox_sha256": "$(sha "$busybox")"},
  "cmdline": "console=ttyS0 quiet panic=-1 rdinit=/init tsc_early_khz=2000000 lpj=4000000"
}
JSON
mv "$out/assets.json.tmp" "$out/assets.json"
echo "vm-assets: built $out (modules: ${order[*]})"
