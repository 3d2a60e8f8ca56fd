#!/usr/bin/env bash
# Installs the PyPI package ChannelAttribution (pinned; its C++ core is built from the
# sdist, a few minutes the first time) into a virtual environment kept under
# ${CRM_TOOLS_DIR:-$HOME/.cache/crm-tools}/attribution-venv, and prints that
# environment's python, for `crm eval-attribution --python`:
#
#   crm eval-attribution --python "$(bash .ci/attribution.sh)"
set -euo pipefail

venv="${CRM_TOOLS_DIR:-$HOME/.cache/crm-tools}/attribution-venv"
# ChannelAttribution imports matplotlib at load time.
packages=(ChannelAttribution==2.2.5 pandas==3.1.1 numpy==2.4.6 matplotlib==3.11.2)
stamp="$venv/.installed-$(printf '%s ' "${packages[@]}" | sha256sum | cut -c1-16)"

if [[ ! -f "$stamp" ]]; then
  rm -rf "$venv"
  python3 -m venv "$venv" >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${packages[@]}" >&2 \
    || { echo "attribution: pip could not install ${packages[*]}" >&2; exit 1; }
  touch "$stamp"
fi
echo "$venv/bin/python"
