#!/usr/bin/env bash
# Deployment artefacts: the Dockerfile (hadolint), the Helm chart (helm lint --strict,
# values.schema.json), its manifests for the default values and for
# charts/crm/ci/all-features-values.yaml (Kubernetes JSON schemas of the oldest and a
# current supported version, plus the production rules in deploy_check.py), k8s/ in
# sync with the chart, docker/compose.yaml well-formed, and, when the service binaries
# are built ($CRM_BIN_DIR), every rendered configuration accepted by its binary.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=tools.sh
source .ci/tools.sh

python="$(dirname "$(readlink -f "$(command -v kubernetes-validate)")")/python"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "hadolint docker/Dockerfile"
hadolint --no-color --config docker/.hadolint.yaml docker/Dockerfile

echo "docker/compose.yaml"
"$python" - <<'PY'
import yaml
doc = yaml.safe_load(open("docker/compose.yaml"))
services = doc["services"]
for name, svc in services.items():
    for dep in (svc.get("depends_on") or {}):
        assert dep in services, f"compose: {name} depends on unknown service {dep}"
print(f"  {len(services)} services")
PY

for values in default ci/all-features-values.yaml; do
  args=()
  [[ "$values" == default ]] || args=(-f "charts/crm/$values")
  echo "helm lint --strict ($values)"
  helm lint --strict charts/crm "${args[@]}" >"$work/lint.log" || { cat "$work/lint.log"; exit 1; }
  out="$work/${values//\//_}"
  helm template crm charts/crm --namespace crm "${args[@]}" >"$out.yaml"
  "$python" .ci/deploy_check.py "$out.yaml" "$out"
  for k in 1.27.0 1.33.0; do
    echo "kubernetes-validate --strict -k $k ($values)"
    kubernetes-validate --strict --quiet -k "$k" "$out/builtin.yaml"
  done
  if [[ -n "${CRM_BIN_DIR:-}" ]]; then
    for toml in "$out"/*.toml; do
      service="$(basename "$toml" .toml)"
      # The environment the pod gets from its Secrets (values are placeholders).
      jwt=()
      grep -q public_key_path "$toml" || jwt=(CRM__AUTH__JWT_SECRET=ci-secret-ci-secret-ci-secret-ci-secret)
      if ! log="$(env "${jwt[@]}" CRM__DATABASE__URL=postgres://crm@db/crm CRM__REDIS__URL=redis://cache:6379/0 \
        CRM__PAGING__TOKEN_SECRET=ci-paging-secret-ci-paging-secret \
        CRM__ENCRYPTION__ACTIVE_KEY=k1 CRM__ENCRYPTION__KEYS__K1=MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDE= \
        CRM__ENCRYPTION__BLIND_INDEX_KEY=MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDE= \
        RUST_LOG=warn "$CRM_BIN_DIR/$service" --config "$toml" check 2>&1)"; then
        printf '%s\n' "$log" >&2
        echo "deploy-check: the chart's configuration of $service ($values) is rejected by its binary" >&2
        exit 1
      fi
      echo "  $service accepts its rendered configuration"
    done
  fi
done

echo "k8s/ in sync with the chart"
bash k8s/sync.sh --check
