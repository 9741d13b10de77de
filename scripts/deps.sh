#!/usr/bin/env bash
# Installs what the build and tests need, once: Debian's packages, and Go
# tools (pinned versions, from the Go module proxy) into TOOLS ($1,
# build/tools). Idempotent and offline when everything is present.
set -euo pipefail
tools="$(realpath -m "${1:-$(dirname "$0")/../build/tools}")"

pkgs=(gcc g++ binutils busybox-static bubblewrap passt nftables runc crun debootstrap uidmap cbindgen zstd curl iproute2 python3 skopeo umoci docker-registry qemu-system-x86 erofs-utils xfsprogs)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "deps: installing ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "deps: cargo not found (install Rust with rustup)"; exit 1; }
command -v go >/dev/null || { echo "deps: go not found"; exit 1; }

# staticcheck for `make check`; the version is pinned, and one that
# understands this Go release (rebuilt when Go is upgraded).
staticcheck_version=v0.8.2
stamp="$tools/staticcheck.version"
want="$staticcheck_version $(go env GOVERSION)"
if [ ! -x "$tools/staticcheck" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "deps: installing staticcheck $staticcheck_version into $tools"
  mkdir -p "$tools"
  GOBIN="$tools" GOFLAGS=-buildvcs=false go install "honnef.co/go/tools/cmd/staticcheck@$staticcheck_version"
  echo "$want" > "$stamp"
fi
