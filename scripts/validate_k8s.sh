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
declare -A bad=()
names=()
for dir in deploy/k8s/overlays/*/ deploy/k8s/multinode/; do
  name="$(basename "$dir")"
  if ! kubectl kustomize "$dir" >"$out/$name.yaml"; then
    echo "FAIL $name: kubectl kustomize failed" >&2; bad[$name]=1; continue
  fi
  names+=("$name")
done
# One validator process per Kubernetes version over every rendered file (a process per file and version
# was 40 Python start-ups); only a version that fails is run again per file, to name the overlay.
files=("${names[@]/#/$out/}")
files=("${files[@]/%/.yaml}")
for v in "${versions[@]}"; do
  kubernetes-validate --strict --quiet -k "$v" "${files[@]}" >/dev/null 2>&1 && continue
  for name in "${names[@]}"; do
    if ! kubernetes-validate --strict --quiet -k "$v" "$out/$name.yaml"; then
      echo "FAIL $name: kubernetes-validate --strict -k $v" >&2; bad[$name]=1
    fi
  done
done
fail=0
for name in "${names[@]}"; do
  # GPU overlays load multi-GB guards from network storage: demand a 10-minute startup budget there.
  case "$name" in gpu-*) min_startup=600 ;; *) min_startup=120 ;; esac
  if ! python deploy/tools/k8s_invariants.py --min-startup-s "$min_startup" "$out/$name.yaml"; then
    echo "FAIL $name: invariants" >&2; bad[$name]=1
  fi
  if [ -n "${bad[$name]:-}" ]; then fail=1; continue; fi
  echo "ok   $name (kubernetes ${versions[0]%.0}..${versions[-1]%.0}, invariants)"
done
[ "${#bad[@]}" = 0 ] || fail=1
exit "$fail"
