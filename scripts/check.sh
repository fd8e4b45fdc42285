#!/usr/bin/env bash
# The whole check: lint, types, proto lint, Kubernetes manifests, tests. Run from the repository root.
set -euo pipefail
ruff check .
mypy scorer_server trainer_client benchmarks
(cd proto && buf lint)
python -m pytest -q
