#!/usr/bin/env bash
# Render every Kustomize overlay (and the multi-node training recipe), validate the output against the
# Kubernetes 1.29-1.33 schemas in strict mode (offline: kubernetes-validate ships the schemas), then check
# our own invariants. Usage: scripts/validate_k8s.sh [OUT_DIR]   (rendered manifests are kept there)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-$(mktemp -d)}"
mkdir -p "$out"
versions=(1.29.0 1.30.0 1.31.0 1.32.0 1.33.0)
for tool in kubectl kubernetes-validate; do
  command -v "$tool" >/dev/null || { echo "validate_k8s: $tool is not installed" >&2; exit 2; }
done
fail=0
for dir in deploy/k8s/overlays/*/ deploy/k8s/multinode/; do
  name="$(basename "$dir")"
  rendered="$out/$name.yaml"
  bad=0
  if ! kubectl kustomize "$dir" >"$rendered"; then
    echo "FAIL $name: kubectl kustomize failed" >&2; fail=1; continue
  fi
  for v in "${versions[@]}"; do
    if ! kubernetes-validate --strict --quiet -k "$v" "$rendered"; then
      echo "FAIL $name: kubernetes-validate --strict -k $v" >&2; bad=1
    fi
  done
  # GPU overlays load multi-GB guards from network storage: demand a 10-minute startup budget there.
  case "$name" in gpu-*) min_startup=600 ;; *) min_startup=120 ;; esac
  if ! python deploy/tools/k8s_invariants.py --min-startup-s "$min_startup" "$rendered"; then
    echo "FAIL $name: invariants" >&2; bad=1
  fi
  if [ "$bad" = 1 ]; then fail=1; continue; fi
  echo "ok   $name (kubernetes ${versions[0]%.0}..${versions[-1]%.0}, invariants)"
done
exit "$fail"
