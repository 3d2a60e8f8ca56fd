"""Checks rendered chart manifests beyond the Kubernetes schemas (run by deploy-check.sh).

usage: deploy_check.py RENDERED.yaml OUT_DIR

Writes OUT_DIR/builtin.yaml (the built-in kinds, for kubernetes-validate) and
OUT_DIR/<service>.toml (each service's configuration file, for `<binary> check`),
and fails with a message per broken rule: pods non-root with a read-only root
filesystem and no capabilities, resources set, gRPC probes, a termination grace
period that covers the drain, every selector matching its pods, ServiceMonitors
pointing at a Service port that exists, hook Jobs ordered after their ConfigMap,
Grafana dashboards that parse and query only metrics the services export.
"""

import json
import pathlib
import re
import sys

import yaml

errors = []


def check(ok, message):
    if not ok:
        errors.append(message)


# The metric families the services export (Prometheus names, see
# crm_platform::metrics and each service's gauges); dashboards may query only these.
EXPORTED = {
    "rpc_server_calls_total", "rpc_server_call_duration_seconds_bucket",
    "rpc_server_call_duration_seconds_count", "rpc_server_call_duration_seconds_sum",
    "db_client_operation_duration_seconds_bucket", "db_client_operation_duration_seconds_count",
    "db_client_operation_duration_seconds_sum",
    "crm_data_quality_kpi", "crm_data_quality_alert", "crm_customers_active", "crm_enrichment_requests_total",
    "crm_analytics_at_risk_customers", "crm_analytics_lifetime_value", "crm_analytics_model_version",
    "crm_analytics_model_age_seconds", "crm_analytics_projection_lag_seconds",
}
METRIC = re.compile(r"\b((?:crm|rpc_server|db_client)_[a-z_]+)\b")


def check_dashboard(name, text):
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        check(False, f"dashboard {name}: not JSON: {e}")
        return
    check(bool(d.get("uid")) and bool(d.get("title")), f"dashboard {name}: uid and title")
    check(bool(d.get("panels")), f"dashboard {name}: no panels")
    ids = [p.get("id") for p in d.get("panels", [])]
    check(len(ids) == len(set(ids)), f"dashboard {name}: panel ids repeat")
    for p in d.get("panels", []):
        targets = p.get("targets", [])
        check(bool(targets), f"dashboard {name}: panel {p.get('title')} has no query")
        for t in targets:
            for metric in METRIC.findall(t.get("expr", "")):
                check(metric in EXPORTED, f"dashboard {name}: panel {p.get('title')}: {metric} is not exported")


def main(rendered, out_dir):
    docs = [d for d in yaml.safe_load_all(pathlib.Path(rendered).read_text()) if d]
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    by_kind = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
        labels = doc["metadata"].get("labels", {})
        for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/managed-by",
                    "app.kubernetes.io/component", "helm.sh/chart"):
            check(key in labels, f"{doc['kind']}/{doc['metadata']['name']}: label {key} missing")

    configs = {}
    for cm in by_kind.get("ConfigMap", []):
        if "crm.toml" not in cm["data"]:
            for key, text in cm["data"].items():
                check(key.endswith(".json"), f"ConfigMap {cm['metadata']['name']}: {key} is neither crm.toml nor a dashboard")
                check_dashboard(key, text)
            continue
        toml = cm["data"]["crm.toml"]
        component = cm["metadata"]["labels"]["app.kubernetes.io/component"]
        hook = "helm.sh/hook" in cm["metadata"].get("annotations", {})
        if not hook:
            configs[cm["metadata"]["name"]] = toml
            (out / f"{component}.toml").write_text(toml)

    services = {s["metadata"]["name"]: s for s in by_kind.get("Service", [])}
    pods = [(d["metadata"]["name"], d["spec"]["template"]) for d in by_kind.get("Deployment", [])]
    pods += [(j["metadata"]["name"], j["spec"]["template"]) for j in by_kind.get("Job", [])]
    for name, template in pods:
        spec = template["spec"]
        check(spec.get("securityContext", {}).get("runAsNonRoot") is True, f"{name}: runAsNonRoot")
        check(spec.get("automountServiceAccountToken") is False, f"{name}: service account token mounted")
        for c in spec["containers"]:
            sc = c.get("securityContext", {})
            check(sc.get("readOnlyRootFilesystem") is True, f"{name}: root filesystem writable")
            check(sc.get("allowPrivilegeEscalation") is False, f"{name}: privilege escalation allowed")
            check(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{name}: capabilities not dropped")
            res = c.get("resources", {})
            check({"cpu", "memory"} <= set(res.get("requests", {})), f"{name}: resource requests")
            check("memory" in res.get("limits", {}), f"{name}: memory limit")
            mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
            check("/etc/crm/config" in mounts, f"{name}: configuration not mounted")

    for d in by_kind.get("Deployment", []):
        name = d["metadata"]["name"]
        template = d["spec"]["template"]
        selector = d["spec"]["selector"]["matchLabels"]
        check(selector.items() <= template["metadata"]["labels"].items(), f"{name}: selector misses its pods")
        c = template["spec"]["containers"][0]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            check("grpc" in c.get(probe, {}), f"{name}: {probe} is not a gRPC probe")
        toml = configs.get(name, "")
        grace = re.search(r"shutdown_grace_secs = (\d+)", toml)
        delay = re.search(r"shutdown_delay_secs = (\d+)", toml)
        check(grace is not None and delay is not None, f"{name}: no shutdown_grace_secs/shutdown_delay_secs in its config")
        if grace and delay:
            check(template["spec"]["terminationGracePeriodSeconds"] == int(delay.group(1)) + int(grace.group(1)) + 5,
                  f"{name}: termination grace period does not cover the delay and the drain")
            ready = c["readinessProbe"]
            check(ready["periodSeconds"] * ready["failureThreshold"] <= int(delay.group(1)),
                  f"{name}: readiness notices NOT_SERVING only after the shutdown delay")
        check(name in services, f"{name}: no Service")
        if name in services:
            check(services[name]["spec"]["selector"].items() <= template["metadata"]["labels"].items(),
                  f"{name}: Service selects no pod")

    for kind in ("HorizontalPodAutoscaler",):
        for h in by_kind.get(kind, []):
            target = h["spec"]["scaleTargetRef"]["name"]
            check(any(d["metadata"]["name"] == target for d in by_kind.get("Deployment", [])),
                  f"{h['metadata']['name']}: scales a Deployment that does not exist")

    for sm in by_kind.get("ServiceMonitor", []):
        name = sm["metadata"]["name"]
        check(sm["apiVersion"] == "monitoring.coreos.com/v1", f"{name}: apiVersion")
        svc = services.get(name)
        check(svc is not None, f"ServiceMonitor {name}: no Service of that name")
        if svc:
            check(sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items(),
                  f"ServiceMonitor {name}: selects no Service")
            ports = {p["name"] for p in svc["spec"]["ports"]}
            for ep in sm["spec"]["endpoints"]:
                check(ep["port"] in ports, f"ServiceMonitor {name}: port {ep['port']} not on the Service")

    selectors = [(d["metadata"]["name"], d["spec"]["selector"]["matchLabels"]) for d in by_kind.get("Deployment", [])]
    selectors += [(p["metadata"]["name"], p["spec"]["selector"]["matchLabels"]) for p in by_kind.get("PodDisruptionBudget", [])]
    for job in by_kind.get("Job", []):
        pod_labels = job["spec"]["template"]["metadata"]["labels"]
        for owner, selector in selectors:
            check(not selector.items() <= pod_labels.items(),
                  f"{job['metadata']['name']}: its pods match the selector of {owner}")
        ann = job["metadata"].get("annotations", {})
        check(ann.get("helm.sh/hook") == "pre-install,pre-upgrade", f"{job['metadata']['name']}: not a hook")
        volumes = job["spec"]["template"]["spec"]["volumes"]
        cm_name = next(v["configMap"]["name"] for v in volumes if "configMap" in v)
        cm = next((c for c in by_kind.get("ConfigMap", []) if c["metadata"]["name"] == cm_name), None)
        check(cm is not None, f"{job['metadata']['name']}: its ConfigMap is not rendered")
        if cm:
            cm_weight = int(cm["metadata"]["annotations"]["helm.sh/hook-weight"])
            check(cm_weight < int(ann["helm.sh/hook-weight"]), f"{job['metadata']['name']}: runs before its ConfigMap")

    builtin = [d for d in docs if d["kind"] != "ServiceMonitor"]
    (out / "builtin.yaml").write_text(yaml.safe_dump_all(builtin, sort_keys=False))
    for e in errors:
        print(f"deploy-check: {rendered}: {e}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
