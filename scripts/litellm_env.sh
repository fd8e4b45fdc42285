#!/usr/bin/env bash
# Build (once) a separate virtual environment holding a real LiteLLM proxy, next to the project's own:
# litellm[proxy] pins its own versions of openai, pydantic, fastapi and uvicorn, so it lives apart, as
# the proxy would in production. tests/test_gateway_litellm.py starts the proxy from here (offline:
# LITELLM_LOCAL_MODEL_COST_MAP=True) and skips, naming this script, without it. About 2 minutes.
#
#   scripts/litellm_env.sh [DIR]      (default: .venv-litellm in the repository root; ignored by git)
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-.venv-litellm}"
version=1.108.7
if [ -x "$dir/bin/litellm" ] && "$dir/bin/python" -c "
import importlib.metadata as m, sys; sys.exit(m.version('litellm') != '$version')" 2>/dev/null; then
  echo "LiteLLM venv ready: $dir"
  exit 0
fi
python -m venv "$dir"
"$dir/bin/python" -m pip install -q --upgrade pip
"$dir/bin/python" -m pip install -q "litellm[proxy]==$version"
"$dir/bin/python" -c "import importlib.metadata as m; print('LiteLLM', m.version('litellm'))"
