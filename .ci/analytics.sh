#!/usr/bin/env bash
# Installs the PyPI references of the analytics models (pinned) into a virtual
# environment kept under ${CRM_TOOLS_DIR:-$HOME/.cache/crm-tools}/analytics-venv, and
# prints that environment's python, for `crm eval-analytics --python` and
# `crm bench analytics --python`:
#
#   crm eval-analytics --python "$(bash .ci/analytics.sh)"
#
# lifetimes (BG/NBD, Gamma-Gamma; it ships the CDNOW sample) and mlxtend (FP-Growth,
# association rules) are pure Python over numpy, scipy and pandas wheels.
set -euo pipefail

venv="${CRM_TOOLS_DIR:-$HOME/.cache/crm-tools}/analytics-venv"
packages=(lifetimes==0.11.3 mlxtend==0.25.0 pandas==3.1.1 numpy==2.4.6 scipy==1.17.1 autograd==1.9.1 scikit-learn==1.9.1)
stamp="$venv/.installed-$(printf '%s ' "${packages[@]}" | sha256sum | cut -c1-16)"

if [[ ! -f "$stamp" ]]; then
  rm -rf "$venv"
  python3 -m venv "$venv" >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${packages[@]}" >&2 \
    || { echo "analytics: pip could not install ${packages[*]}" >&2; exit 1; }
  touch "$stamp"
fi
echo "$venv/bin/python"
