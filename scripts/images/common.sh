# Shared by the image build scripts: input hashing, deterministic packing.
# Sourced, not run.

# A fixed time for every packed entry: the same inputs give the same bytes.
: "${SOURCE_DATE_EPOCH:=1704067200}"

# inputs_hash FILE... : sha256 over the named files' contents and any
# extra strings given through $INPUT_STRINGS.
inputs_hash() {
  { for f in "$@"; do printf '%s\n' "$f"; sha256sum < "$f"; done
    printf '%s\n' "${INPUT_STRINGS:-}"; } | sha256sum | cut -d' ' -f1
}

# up_to_date NAME HASH OUTDIR : true when OUTDIR/NAME.tar.zst and its
# rootfs were built from inputs with this hash.
up_to_date() {
  local name=$1 hash=$2 out=$3
  [ -f "$out/$name.inputs" ] && [ "$(cat "$out/$name.inputs")" = "$hash" ] &&
    [ -f "$out/$name.tar.zst" ] && [ -d "$out/$name/rootfs" ]
}

# build_lock NAME OUTDIR : one build of NAME at a time (two `make` runs in
# one tree would otherwise swap directories under each other's tar).
build_lock() {
  exec 9>"$2/.$1.lock"
  flock 9
}

# pack ROOTFS OUT.tar.zst : sorted names, fixed times, numeric owners, no
# atime/ctime, so the archive depends on the content only.
pack() {
  local rootfs=$1 out=$2
  tar --sort=name --format=posix \
      --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
      --mtime="@$SOURCE_DATE_EPOCH" --numeric-owner \
      -C "$rootfs" -cf - . |
    zstd -q -19 -T0 -f -o "$out.tmp"
  mv -f "$out.tmp" "$out"
}

# finish NAME HASH OUTDIR STAGING : swap the new rootfs in, pack, record.
finish() {
  local name=$1 hash=$2 out=$3 staging=$4
  rm -f "$out/$name.inputs"
  rm -rf "$out/$name.old"
  [ -d "$out/$name" ] && mv "$out/$name" "$out/$name.old"
  mkdir -p "$out/$name"
  mv "$staging" "$out/$name/rootfs"
  rm -rf "$out/$name.old"
  pack "$out/$name/rootfs" "$out/$name.tar.zst"
  echo "$hash" > "$out/$name.inputs"
  printf '%s: %s bytes, sha256 %s\n' "$name.tar.zst" \
    "$(stat -c %s "$out/$name.tar.zst")" "$(sha256sum < "$out/$name.tar.zst" | cut -d' ' -f1)"
}
