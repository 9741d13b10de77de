#!/usr/bin/env bash
# make run: the path a user's first run takes, end to end on this machine.
# build -> images -> signed release in dist/ -> serve dist/ over HTTP on
# 127.0.0.1 -> the quickstart example's EnsureInstalled downloads, verifies
# and installs it into a fresh LOCKBOX_HOME -> loads it -> runs a sandbox.
# Every step waits on completion, never on a clock: nothing here depends
# on how warm the Go or cargo caches are.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

make --no-print-directory build
make --no-print-directory image-base
if ! make --no-print-directory image-python; then
  echo "run: the python image could not be built; releasing without it" >&2
fi
# The microVM guest (cached by input hash: ~0.1 s warm); the quickstart
# installs without it, but the release carries it like make release's.
if ! make --no-print-directory vm-assets; then
  echo "run: the microVM assets could not be built; releasing without them" >&2
fi
make --no-print-directory release-only servedist

home="$(mktemp -d)"
trap 'rm -rf "$home"' EXIT
echo "run: installing dist/ into a fresh LOCKBOX_HOME ($home)"

# Nothing may short-cut the install path: no dev library, helper or images.
unset LOCKBOX_LIB LOCKBOX_HELPER LOCKBOX_IMAGES LOCKBOX_OFFLINE
# The quickstart is compiled before the server starts, so the server's
# life is only the install and the sandbox. The release is signed with
# this machine's development key: the program is linked to trust its pin
# (build/pin); the committed pin stays as it is.
mkdir -p build
(cd examples && go build -ldflags "-X lockbox.dev/lockbox.devPin=$root/build/pin" -o "$root/build/quickstart" ./quickstart)
LOCKBOX_HOME="$home" scripts/with-dist-server "$root/dist" -- "$root/build/quickstart"
