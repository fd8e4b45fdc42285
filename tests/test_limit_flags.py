"""Every limit flag reaches every backend and what GetInfo reports (once lost for vllm and tgi, which
reported the defaults 8192/512 and enforced nothing of --max-conversation-tokens / --max-cuts)."""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

import pytest

from scorer_server.config import add_server_arguments, config_from
from scorer_server.limits import Limits
from scorer_server.metrics import ServerMetrics
from scorer_server.server import build_backend
from star_contract.errors import InvalidRequest
from star_contract.types import Conversation, CutKind, CutSpec, ScoreRequest

FLAGS = ["--max-conversation-tokens", "300", "--max-cuts", "7", "--max-judge-conversations", "5"]


def server_config(guard: Path, *extra: str):
    parser = argparse.ArgumentParser()
    add_server_arguments(parser)
    return config_from(parser.parse_args(["--guard", str(guard), *FLAGS, *extra]), env={})


@pytest.mark.parametrize("backend", ["local", "vllm", "tgi"])
def test_limit_flags_reach_the_backend_and_getinfo(tiny_guard_dir: Path, backend: str) -> None:
    extra = [] if backend == "local" else ["--backend", backend, "--remote-url", "http://127.0.0.1:9"]
    config = server_config(tiny_guard_dir, *extra, "--no-warmup" if backend == "local" else "--warmup")
    assert config.limits == Limits(300, 7, 5)
    b = build_backend(config, ServerMetrics())
    assert b.config.limits == config.limits  # type: ignore[attr-defined]

    async def run() -> None:
        await b.start()  # remote: opens its HTTP session; nothing listens there, nothing is sent
        info = b.info()
        assert (info.max_conversation_tokens, info.max_cuts) == (300, 7)
        many_cuts = ScoreRequest(Conversation.from_pair("q", " ".join(["w"] * 20)), CutSpec(CutKind.WORDS, 1))
        with pytest.raises(InvalidRequest, match="20 cuts, over the limit of 7"):
            async for _ in b.score(many_cuts):
                pass
        long = ScoreRequest(Conversation.from_pair("q", "word " * 400), CutSpec(CutKind.WORDS, 500))
        with pytest.raises(InvalidRequest, match="over the limit of 300"):
            async for _ in b.score(long):
                pass
        with pytest.raises(InvalidRequest, match=r"conversations\[0\] is \d+ guard tokens, over the limit"):
            await b.judge([long.conversation])
        await b.stop(1.0)

    asyncio.run(run())


def test_a_huge_response_is_refused_before_any_per_cut_rendering(tiny_guard_dir: Path) -> None:
    """200,000 characters at 5 words a cut is ~8,000 cuts: refused from the cut count alone, at once
    (it used to render and tokenise the guard prompt for every cut first, minutes of planning)."""
    from scorer_server.engine.engine import StarEngine

    engine = StarEngine.from_dir(tiny_guard_dir)
    response = ("lorem ipsum dolor sit amet " * 7500)[:200_000]
    t0 = time.perf_counter()
    with pytest.raises(InvalidRequest, match="cuts, over the limit of 512"):
        engine.plan(ScoreRequest(Conversation.from_pair("q", response), CutSpec()))
    assert time.perf_counter() - t0 < 5.0
    few_cuts = ScoreRequest(Conversation.from_pair("q", response), CutSpec(CutKind.WORDS, 100_000))
    t0 = time.perf_counter()
    with pytest.raises(InvalidRequest, match="guard tokens, over the limit of 8192"):
        engine.plan(few_cuts)
    assert time.perf_counter() - t0 < 5.0
