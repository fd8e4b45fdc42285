#!/usr/bin/env bash
# The whole check: lint, types, proto lint, tests. Run from the repository root.
set -euo pipefail
ruff check .
mypy scorer_server trainer_client
python -m pytest -q
