#!/usr/bin/env bash
# Installs what the build and tests need from Debian's packages, once.
# Idempotent and quick when everything is present.
set -euo pipefail

pkgs=(gcc g++ binutils busybox-static bubblewrap passt nftables runc crun debootstrap uidmap cbindgen zstd curl iproute2 python3 skopeo umoci docker-registry)
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
