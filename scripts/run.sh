#!/usr/bin/env bash
# make run: the path a user's first run takes, end to end on this machine.
# build -> images -> signed release in dist/ -> serve dist/ over HTTP on
# 127.0.0.1 -> the quickstart example's EnsureInstalled downloads, verifies
# and installs it into a fresh LOCKBOX_HOME -> loads it -> runs a sandbox.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

make --no-print-directory build
make --no-print-directory image-base
if ! make --no-print-directory image-python; then
  echo "run: the python image could not be built; releasing without it" >&2
fi
make --no-print-directory release-only

work="$(mktemp -d)"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

scripts/serve-dist "$root/dist" -url-file "$work/url" -q >/dev/null &
server_pid=$!
# The first start compiles the server (a cold Go cache takes a while):
# wait as long as it is alive, up to five minutes.
for _ in $(seq 1 3000); do
  [ -s "$work/url" ] && break
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.1
done
[ -s "$work/url" ] || { echo "run: the release server did not start (see scripts/serve-dist)" >&2; exit 1; }
url="$(cat "$work/url")"
echo "run: serving dist/ at $url; installing into a fresh LOCKBOX_HOME ($work/home)"

# Nothing may short-cut the install path: no dev library, helper or images.
unset LOCKBOX_LIB LOCKBOX_HELPER LOCKBOX_IMAGES LOCKBOX_OFFLINE
cd examples
# The release is signed with this machine's development key: the program
# is linked to trust its pin (build/pin), the committed pin stays as it is.
LOCKBOX_RELEASE_URL="$url" LOCKBOX_HOME="$work/home" \
  go run -ldflags "-X lockbox.dev/lockbox.devPin=$root/build/pin" ./quickstart
