#!/usr/bin/env bash
# Prints the Debian mirror URI that this machine's apt uses for SUITE
# (deb822 .sources and one-line sources.list), so the image build uses the
# same mirror as apt-get instead of a hard-coded host.
set -euo pipefail
suite=${1:-bookworm}
shopt -s nullglob
for f in /etc/apt/sources.list.d/*.sources; do
  awk -v suite="$suite" '
    function flush() { if (types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " suite " ") && uris != "" && uris !~ /security/) { split(uris, u, " "); print u[1]; found=1; exit } types=""; suites=""; uris="" }
    /^[[:space:]]*$/ { flush(); next }
    /^Types:/  { sub(/^Types:[[:space:]]*/, "");  types=$0 }
    /^Suites:/ { sub(/^Suites:[[:space:]]*/, ""); suites=$0 }
    /^URIs:/   { sub(/^URIs:[[:space:]]*/, "");   uris=$0 }
    END { if (!found) flush() }' "$f"
done | head -1 | grep . && exit 0
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
  [ -f "$f" ] || continue
  awk -v suite="$suite" '$1 == "deb" {
      i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
      if ($(i+1) == suite && $i !~ /security/) { print $i; exit } }' "$f"
done | head -1 | grep . && exit 0
echo "apt-mirror: no apt source for suite $suite" >&2
exit 1
