#!/usr/bin/env bash
# Renders charts/crm with its default values into plain manifests for kubectl users:
#   k8s/migrations.yaml  the migration Jobs (delete the previous ones, apply, wait for them)
#   k8s/crm.yaml         everything else
#   bash k8s/sync.sh           rewrite both
#   bash k8s/sync.sh --check   fail if they differ from what the chart renders (CI)
# Needs helm (`source .ci/tools.sh` puts it on PATH).
set -euo pipefail
cd "$(dirname "$0")/.."

render() {
  local header="# Rendered from charts/crm with default values by k8s/sync.sh: do not edit; edit the chart."
  printf '%s\n' "$header"
  helm template crm charts/crm --namespace crm "$@"
}

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
render --no-hooks >"$tmp/crm.yaml"
render --show-only templates/migrations.yaml >"$tmp/migrations.yaml"

if [[ "${1:-}" == "--check" ]]; then
  status=0
  for f in crm.yaml migrations.yaml; do
    if ! diff -u "k8s/$f" "$tmp/$f"; then
      echo "k8s/$f is out of date: run bash k8s/sync.sh" >&2
      status=1
    fi
  done
  exit "$status"
fi
cp "$tmp/crm.yaml" "$tmp/migrations.yaml" k8s/
echo "k8s/crm.yaml and k8s/migrations.yaml rendered"
