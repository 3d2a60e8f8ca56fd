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

dest="${1:-${CRM_TOOLS_DIR:-$HOME/.cache/crm-tools}/cdnow}"
exec bash "$(dirname "$0")/wheel-files.sh" lifetimes "$version" "$wheel" "$sha256" lifetimes/datasets "$dest" "${files[@]}"
