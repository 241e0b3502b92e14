#!/usr/bin/env bash
# Validates every manifest under deploy/k8s offline: each overlay rendered
# with kustomize (Go module proxy, built once into ~/.cache/tessera) and
# checked against the Kubernetes 1.37 schemas with kubernetes-validate
# --strict (PyPI; unknown fields are errors); the ScyllaCluster against
# schemas/scyllacluster.schema.json; the container file's structure.
# Writes the rendered overlays to $OUT (default target/k8s).
set -euo pipefail
cd "$(dirname "$0")"
cache="${TESSERA_CACHE:-$HOME/.cache/tessera}"
out="${OUT:-../../target/k8s}"
mkdir -p "$cache" "$out"

kustomize="$cache/go-bin/kustomize"
if [ ! -x "$kustomize" ]; then
  echo "validate.sh: building kustomize v5.7.1 (Go module proxy) into $cache/go-bin" >&2
  GOBIN="$cache/go-bin" GOFLAGS=-mod=mod go install sigs.k8s.io/kustomize/kustomize/v5@v5.7.1
fi
venv="$cache/k8s-venv"
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  echo "validate.sh: installing kubernetes-validate 1.37.0 (PyPI) into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q kubernetes-validate==1.37.0
fi

status=0
for overlay in overlays/*/; do
  name="$(basename "$overlay")"
  "$kustomize" build "$overlay" > "$out/$name.yaml"
  # --strict: unexpected properties are errors. A kind without a bundled
  # schema is only a warning there: every such kind must be checked below.
  report="$("$venv/bin/kubernetes-validate" --strict --kubernetes-version 1.37.0 "$out/$name.yaml" 2>&1)" || { echo "$report"; status=1; }
  "$venv/bin/python" - "$out/$name.yaml" "$report" <<'PY' || status=1
import json, sys, re, yaml, jsonschema
path, report = sys.argv[1], sys.argv[2]
docs = [d for d in yaml.safe_load_all(open(path)) if d]
checked_here = {"ScyllaCluster": json.load(open("schemas/scyllacluster.schema.json"))}
failed = False
for kind in set(re.findall(r"Couldn't find schema for kind (\w+)", report)) - set(checked_here):
    print(f"{path}: no schema for {kind}"); failed = True
for line in report.splitlines():
    if line.startswith(("ERROR", "WARN")) and "Couldn't find schema for kind ScyllaCluster" not in line:
        print(line); failed = True
for d in docs:
    schema = checked_here.get(d.get("kind"))
    if schema:
        for e in jsonschema.Draft202012Validator(schema).iter_errors(d):
            print(f"{path}: {d['kind']}/{d['metadata']['name']}: {'/'.join(map(str, e.absolute_path))}: {e.message}"); failed = True
# What a node needs from its surroundings: probes on /healthz and /readyz,
# a non-root user, the config mounted where --config points.
for d in docs:
    if d.get("kind") == "Deployment" and d["metadata"]["name"] == "tessera":
        c = d["spec"]["template"]["spec"]["containers"][0]
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz", "readiness on /readyz"
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz", "liveness on /healthz"
        assert d["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
        assert any(m["mountPath"] == "/etc/tessera/config" for m in c["volumeMounts"])
kinds = sorted({d["kind"] for d in docs})
print(f"{path}: {len(docs)} objects ({', '.join(kinds)}): {'FAILED' if failed else 'valid'}")
sys.exit(1 if failed else 0)
PY
done

# The container file: multi-stage, a locked release build, a non-root user.
df=../container/Dockerfile
[ "$(grep -c '^FROM ' "$df")" -ge 2 ] || { echo "$df: not multi-stage"; status=1; }
grep -q -- '--locked' "$df" || { echo "$df: build not --locked"; status=1; }
grep -Eq '^USER [1-9][0-9]*' "$df" || { echo "$df: runs as root"; status=1; }
exit $status
