#!/usr/bin/env bash
# Puts the CDNOW sample (Fader, Hardie & Lee 2005: 2 357 customers, 39-week calibration) into a
# directory, for the lifetime-value model's validation:
#
#   bash .ci/cdnow.sh [DEST]    # DEST defaults to ${CRM_TOOLS_DIR:-$HOME/.cache/crm-tools}/cdnow
#
# The data is the CDNOW sample as shipped inside the PyPI package `lifetimes` (pinned below;
# MIT per its wheel metadata), which publishes it from the paper's public data. The wheel is
# fetched with pip, checked against a pinned sha256, and only the summary CSV files are
# extracted, byte for byte, into DEST:
#   cdnow_customers_summary.csv                    ID, frequency, recency, T (weeks)
#   cdnow_customers_summary_with_transactions.csv  ID, x, t_x, T, zbar (mean spend)
# Prints DEST; does nothing more if DEST already holds both files.
set -euo pipefail

version=0.11.3
sha256=261e3dc89977c2b60767ca6728aaa29d429de0c814635070a749c36555895da8
wheel="Lifetimes-${version}-py3-none-any.whl"
files=(cdnow_customers_summary.csv cdnow_customers_summary_with_transactions.csv)

die() { echo "cdnow: $*" >&2; exit 1; }

dest="${1:-${CRM_TOOLS_DIR:-$HOME/.cache/crm-tools}/cdnow}"

have_all() {
  local f
  for f in "${files[@]}"; do [[ -s "$dest/$f" ]] || return 1; done
}
if have_all; then echo "$dest"; exit 0; fi

mkdir -p "$dest" || die "cannot create $dest"
tmp="$(mktemp -d "$dest/.tmp.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

python3 -m pip download --quiet --no-deps --only-binary=:all: \
  "lifetimes==${version}" --dest "$tmp" >&2 \
  || die "pip could not download lifetimes==${version}"
[[ -f "$tmp/$wheel" ]] || die "pip did not produce $wheel"

got="$(sha256sum "$tmp/$wheel" | cut -d' ' -f1)"
[[ "$got" == "$sha256" ]] || die "sha256 mismatch for $wheel: got $got, want $sha256"

python3 - "$tmp/$wheel" "$tmp" "${files[@]}" <<'PY' || die "could not extract the CDNOW files from the wheel"
import os, sys, zipfile
wheel, out, names = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(wheel) as z:
    for name in names:
        with open(os.path.join(out, name), "wb") as f:
            f.write(z.read("lifetimes/datasets/" + name))
PY

for f in "${files[@]}"; do mv -f "$tmp/$f" "$dest/$f"; done
echo "$dest"
