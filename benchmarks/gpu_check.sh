#!/usr/bin/env bash
# One prepared GPU check: equivalence tests on CUDA, then engine throughput on random-initialised guards
# with real Llama Guard 3 shapes (1B: hidden 2048, 16 layers, 32 heads, 8 KV heads, vocab 128256) in bf16.
# Usage (on a machine with CUDA, from the repo root): bash benchmarks/gpu_check.sh [OUT_DIR]
set -euo pipefail
out=${1:-${OUT:-/tmp/gpu_check}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0))"
python -m pytest -q -m gpu tests/test_one_pass_equivalence.py 2>&1 | tee "$out/gpu_tests.log"
for shape in llama-guard-3-1b llama-guard-3-8b; do
  python benchmarks/star_engine.py --shape "$shape" --device cuda --dtype bfloat16 \
    --conversations 32 --per-cut-conversations 4 --repeats 3 2>&1 | tee "$out/star_engine_$shape.log" | tail -1
done
# Live moderation: one session's cuts against re-scoring each prefix, on the same real shapes.
for shape in llama-guard-3-1b llama-guard-3-8b; do
  python benchmarks/moderate.py --shape "$shape" --device cuda --dtype bfloat16 --sample 12 \
    2>&1 | tee "$out/moderate_$shape.log" | tail -1
done
