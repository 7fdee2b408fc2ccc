#!/bin/sh
# Offline checks of deploy/k8s (there is no cluster here) and of the
# compose file's variables: every manifest parses; each object has the
# fields Kubernetes requires of its kind; selectors match their pod
# labels; the names objects refer to (ConfigMap, claim, headless Service,
# probe ports) exist; containers have probes, resource requests and
# limits, and mount the model read-only; every EPMOE_* variable set in the
# manifests or in deploy/docker-compose.yml is one that epmoe-router or
# epmoe-worker --help names.  Prints "N passed, N failed".
set -u
top=$(cd "$(dirname "$0")/../.." && pwd)
B=${EPMOE_BIN:-$top/build/bin}
known=$( { "$B/epmoe-router" --help; "$B/epmoe-worker" --help; } | grep -o 'EPMOE_[A-Z_]*' | sort -u | tr '\n' ' ')
[ -n "$known" ] || { echo "k8s: FAIL: no --help from $B"; echo "0 passed, 1 failed"; exit 1; }
exec /usr/bin/python3 - "$top" "$known" <<'PY'
import os, re, sys
import yaml

top, known = sys.argv[1], set(sys.argv[2].split())
passed = failed = 0
def check(ok, what):
    global passed, failed
    if ok:
        passed += 1
    else:
        failed += 1
        print("k8s: FAIL:", what)

kdir = os.path.join(top, "deploy", "k8s")
kust = yaml.safe_load(open(os.path.join(kdir, "kustomization.yaml")))
check(kust.get("kind") == "Kustomization", "kustomization.yaml kind")
objs = []
for f in kust["resources"]:
    path = os.path.join(kdir, f)
    check(os.path.exists(path), f"kustomization lists a missing file {f}")
    for d in yaml.safe_load_all(open(path)):
        if d is not None:
            objs.append((f, d))
listed = set(kust["resources"])
for f in os.listdir(kdir):
    if f.endswith(".yaml") and f != "kustomization.yaml":
        check(f in listed, f"{f} is not in kustomization.yaml")

API = {"Namespace": "v1", "ConfigMap": "v1", "Service": "v1", "PersistentVolume": "v1",
       "PersistentVolumeClaim": "v1", "Deployment": "apps/v1", "StatefulSet": "apps/v1",
       "PodDisruptionBudget": "policy/v1"}
by_kind = {}
for f, d in objs:
    k = d.get("kind")
    check(k in API, f"{f}: unexpected kind {k}")
    check(d.get("apiVersion") == API.get(k), f"{f}: {k} apiVersion {d.get('apiVersion')}")
    name = (d.get("metadata") or {}).get("name")
    check(bool(name) and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name or "") is not None,
          f"{f}: {k} has no valid metadata.name")
    if k not in ("Namespace", "PersistentVolume"):
        check(d["metadata"].get("namespace") == kust["namespace"], f"{f}: {k}/{name} namespace")
    by_kind.setdefault(k, {})[name] = d

def sub(labels, sel):
    return all(labels.get(a) == b for a, b in sel.items())

env_names = set()
for kind in ("Deployment", "StatefulSet"):
    for name, d in by_kind.get(kind, {}).items():
        spec = d["spec"]
        sel = spec["selector"]["matchLabels"]
        tmpl = spec["template"]
        check(sub(tmpl["metadata"]["labels"], sel), f"{kind}/{name}: selector does not match the pod labels")
        pod = tmpl["spec"]
        vols = {v["name"]: v for v in pod.get("volumes", [])}
        for v in vols.values():
            if "persistentVolumeClaim" in v:
                claim = v["persistentVolumeClaim"]["claimName"]
                check(claim in by_kind.get("PersistentVolumeClaim", {}), f"{kind}/{name}: no claim {claim}")
                check(v["persistentVolumeClaim"].get("readOnly") is True, f"{kind}/{name}: claim {claim} not read-only")
        check(pod.get("securityContext", {}).get("runAsNonRoot") is True, f"{kind}/{name}: not runAsNonRoot")
        for c in pod["containers"]:
            cn = f"{kind}/{name}/{c['name']}"
            check(bool(c.get("image")), f"{cn}: no image")
            for p in ("readinessProbe", "livenessProbe"):
                check(p in c, f"{cn}: no {p}")
                pr = c.get(p, {})
                port = pr.get("httpGet", {}).get("port")
                if isinstance(port, str):
                    check(port in [q["name"] for q in c.get("ports", [])], f"{cn}: {p} port {port} not declared")
            res = c.get("resources", {})
            check("requests" in res and "limits" in res, f"{cn}: resources need requests and limits")
            mounts = c.get("volumeMounts", [])
            check(any(m["mountPath"] == "/models" and m.get("readOnly") for m in mounts),
                  f"{cn}: the model is not mounted read-only at /models")
            for m in mounts:
                check(m["name"] in vols, f"{cn}: mount of an undeclared volume {m['name']}")
            for ef in c.get("envFrom", []):
                cm = ef.get("configMapRef", {}).get("name")
                check(cm in by_kind.get("ConfigMap", {}), f"{cn}: no ConfigMap {cm}")
            for e in c.get("env", []):
                env_names.add(e["name"])
        if kind == "StatefulSet":
            svc = by_kind.get("Service", {}).get(spec["serviceName"])
            check(svc is not None and svc["spec"].get("clusterIP") == "None",
                  f"StatefulSet/{name}: serviceName {spec['serviceName']} is not a headless Service")
for name, s in by_kind.get("Service", {}).items():
    pods = [d["spec"]["template"]["metadata"]["labels"] for k in ("Deployment", "StatefulSet")
            for d in by_kind.get(k, {}).values()]
    check(any(sub(l, s["spec"]["selector"]) for l in pods), f"Service/{name} selects no pods")
for name, p in by_kind.get("PodDisruptionBudget", {}).items():
    sts = by_kind.get("StatefulSet", {}).values()
    check(any(sub(d["spec"]["template"]["metadata"]["labels"], p["spec"]["selector"]["matchLabels"]) for d in sts),
          f"PodDisruptionBudget/{name} selects no workers")
for cm in by_kind.get("ConfigMap", {}).values():
    env_names |= set(cm["data"])
    n = cm["data"].get("EPMOE_EXPECT_WORKERS")
    reps = [d["spec"]["replicas"] for d in by_kind.get("StatefulSet", {}).values()]
    check(n is None or [int(n)] == reps, f"EPMOE_EXPECT_WORKERS {n} differs from the worker replicas {reps}")

compose = yaml.safe_load(open(os.path.join(top, "deploy", "docker-compose.yml")))
for svc in compose["services"].values():
    env_names |= set((svc.get("environment") or {}).keys())
for e in sorted(env_names):
    if e.startswith("EPMOE_"):
        check(e in known, f"{e} is set in a deployment file but no flag has it")
print(f"k8s: {len(objs)} objects; {len([e for e in env_names if e.startswith('EPMOE_')])} EPMOE_* variables, all known flags" if failed == 0 else "k8s: failures above")
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
PY
