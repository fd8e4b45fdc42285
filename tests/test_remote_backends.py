"""Contract tests of the remote guard engines (vLLM, TGI) against local HTTP servers that speak each
engine's documented request and response formats. No real engine runs here."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from scorer_server.backends import build_remote_backend, load_prompt_guard
from scorer_server.backends.http import Dispatcher, RemoteOverloaded, RetryPolicy
from scorer_server.backends.prompts import PromptGuard
from scorer_server.backends.remote import RemoteBackend, RemoteConfig
from scorer_server.backends.tgi import TgiBackend, verdict_logprobs
from scorer_server.backends.vllm import VllmBackend
from scorer_server.engine.cuts import plan_cuts
from scorer_server.guards.guard_config import GuardConfig
from scorer_server.limits import Limits
from star_contract.errors import InvalidRequest
from star_contract.types import Conversation, CutKind, CutSpec, ScoreRequest
from star_testing.scorer_process import free_port
from star_testing.tiny_guard import TinyGuardSpec, save_tiny_guard

FAST_RETRY = RetryPolicy(attempts=5, base_delay_s=0.001, max_delay_s=0.01)
CONV = Conversation.from_pair(
    "How do I bake bread?", "Mix flour, water and yeast. Knead it well, let it rise, then bake it hot."
)
TGI_FORBIDDEN = {"temperature", "top_p", "top_k", "repetition_penalty", "frequency_penalty", "typical_p"}


@pytest.fixture(scope="module")
def guard_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_guard(tmp_path_factory.mktemp("guard") / "tiny-llama", TinyGuardSpec(family="llama"))


@pytest.fixture(scope="module")
def guard(guard_dir: Path) -> PromptGuard:
    return load_prompt_guard(GuardConfig(path=str(guard_dir)), "test")


def fake_logprobs(ids: list[int]) -> tuple[float, float]:
    """Deterministic log-probs of (safe, unsafe) that differ from cut to cut."""
    return -0.05 - 0.13 * (len(ids) % 11), -0.4 - 0.07 * (sum(ids) % 13)


def expected_scores(
    guard: PromptGuard, conv: Conversation, spec: CutSpec, t: float
) -> list[tuple[int, float]]:
    """What the scores must be: sigmoid of the fake log-prob difference over T, per cut."""
    out = []
    for c in plan_cuts(conv.response, spec, guard.tokenizer):
        s, u = fake_logprobs(guard.encode(guard.template.render(conv, c)))
        out.append((c, 1.0 / (1.0 + math.exp(-(s - u) / t))))
    return out


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def serve(handler: Handler) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


async def collect(backend: RemoteBackend, req: ScoreRequest) -> list[tuple[int, float]]:
    parts = [part async for part in backend.score(req)]
    for part in parts:
        assert [s.end for s in part.segments] == sorted(s.end for s in part.segments)
    assert [p.last for p in parts] == [False] * (len(parts) - 1) + [True]
    return sorted((s.end, s.p_safe) for part in parts for s in part.segments)


# -- vLLM ------------------------------------------------------------------------------------------------


class FakeVllm:
    """vLLM's /v1/completions with logprob_token_ids; the first try of every prompt is 'overloaded'."""

    def __init__(self, guard: PromptGuard, busy_first: bool = True) -> None:
        self.guard = guard
        self.bodies: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.busy_first = busy_first
        self.rejected: set[tuple[int, ...]] = set()
        self.in_flight = 0
        self.peak = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.paths.append(request.path)
        body = await request.json()
        self.bodies.append(body)
        key = tuple(body["prompt"])
        if self.busy_first and key not in self.rejected:
            self.rejected.add(key)
            # vLLM answers 503 when its engine is saturated; some proxies say "overloaded" in a 500.
            if len(self.rejected) % 2:
                return web.json_response({"error": {"message": "Service Unavailable"}}, status=503)
            return web.json_response({"object": "error", "message": "Engine is overloaded"}, status=500)
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        await asyncio.sleep(0.005)
        self.in_flight -= 1
        lp_safe, lp_unsafe = fake_logprobs(body["prompt"])
        safe, unsafe = body["logprob_token_ids"]
        first = {f"token_id:{safe}": lp_safe, f"token_id:{unsafe}": lp_unsafe}
        chosen = safe if lp_safe >= lp_unsafe else unsafe
        n = body["max_tokens"]
        text = "safe" if chosen == safe else "unsafe\nS1,S10"
        return web.json_response(
            {
                "id": "cmpl-1",
                "object": "text_completion",
                "created": 0,
                "model": body.get("model", "guard"),
                "choices": [
                    {
                        "index": 0,
                        "text": text if n > 1 else text.split("\n")[0],
                        "logprobs": {
                            "text_offset": [0],
                            "token_logprobs": [max(lp_safe, lp_unsafe)],
                            "tokens": [f"token_id:{chosen}"],
                            "top_logprobs": [first] + [{}] * (n - 1),
                        },
                        "finish_reason": "length",
                        "stop_reason": None,
                    }
                ],
                "usage": {"prompt_tokens": len(body["prompt"]), "completion_tokens": n, "total_tokens": 0},
            }
        )


def test_vllm_request_fields_scores_and_retries(guard: PromptGuard) -> None:
    async def run() -> None:
        fake = FakeVllm(guard)
        runner, url = await serve(fake.handle)
        backend = VllmBackend(guard, RemoteConfig(urls=(url,), max_concurrency=3, retry=FAST_RETRY))
        await backend.start()
        try:
            spec = CutSpec(CutKind.WORDS, every=3)
            got = await collect(backend, ScoreRequest(CONV, spec, temperature=2.0))
        finally:
            await backend.stop(1.0)
            await runner.cleanup()
        want = expected_scores(guard, CONV, spec, 2.0)
        assert [e for e, _ in got] == [e for e, _ in want]
        assert [p for _, p in got] == pytest.approx([p for _, p in want], abs=1e-12)
        n = len(want)
        assert len(fake.bodies) == 2 * n and backend.dispatcher.retries == n  # every cut retried once
        assert set(fake.paths) == {"/v1/completions"}
        prompts = set()
        for body in fake.bodies:
            assert set(body) == {
                "prompt",
                "max_tokens",
                "temperature",
                "logprob_token_ids",
                "logprobs",
                "return_tokens_as_token_ids",
                "cache_salt",
            }
            assert body["max_tokens"] == 1 and body["temperature"] == 0.0
            assert body["logprob_token_ids"] == [guard.safe_id, guard.unsafe_id]
            assert body["return_tokens_as_token_ids"] is True
            assert all(isinstance(i, int) for i in body["prompt"])
            prompts.add(tuple(body["prompt"]))
        rendered = {tuple(guard.encode(guard.template.render(CONV, c))) for c, _ in want}
        assert prompts == rendered  # one request per cut, the exact per-cut guard prompt as token ids
        assert 1 <= fake.peak <= 3  # the concurrency cap holds
        # one prefix-cache salt for the cuts of the request (they share the engine's cache), unguessable
        salts = {body["cache_salt"] for body in fake.bodies}
        assert len(salts) == 1 and len(next(iter(salts))) == 32

    asyncio.run(run())


def test_vllm_cache_salt_keeps_requests_apart_or_is_off(guard: PromptGuard) -> None:
    """Each Score request gets its own salt, so vLLM's prefix cache (a timing side channel across
    callers, CVE-2025-46570) is never shared between requests; with cache_salt 'off' no salt is sent."""

    async def run(salt: str) -> list[dict[str, Any]]:
        fake = FakeVllm(guard)
        runner, url = await serve(fake.handle)
        config = RemoteConfig(urls=(url,), retry=FAST_RETRY, cache_salt=salt)
        backend = VllmBackend(guard, config)
        await backend.start()
        try:
            for _ in range(2):
                await collect(backend, ScoreRequest(CONV, CutSpec(CutKind.WORDS, every=3)))
            await backend.judge([CONV, CONV])
        finally:
            await backend.stop(1.0)
            await runner.cleanup()
        return list(fake.bodies)

    salted = asyncio.run(run("request"))
    scored = [b for b in salted if b["max_tokens"] == 1]  # Judge asks for more than the verdict token
    judged = [b["cache_salt"] for b in salted if b["max_tokens"] > 1]
    cuts = {tuple(b["prompt"]) for b in scored}
    by_salt: dict[str, set[tuple[int, ...]]] = {}
    for b in scored:
        by_salt.setdefault(b["cache_salt"], set()).add(tuple(b["prompt"]))
    # two requests, two salts, and each salt covers every cut of its request
    assert len(by_salt) == 2 and all(prompts == cuts for prompts in by_salt.values())
    assert len(set(judged)) == 2 and not set(judged) & set(by_salt)
    assert all("cache_salt" not in b for b in asyncio.run(run("off")))


def test_vllm_judge_reads_verdict_and_categories(guard: PromptGuard) -> None:
    async def run() -> None:
        fake = FakeVllm(guard, busy_first=False)
        runner, url = await serve(fake.handle)
        backend = VllmBackend(guard, RemoteConfig(urls=(url,), model="guard", retry=FAST_RETRY))
        await backend.start()
        try:
            verdicts = await backend.judge([CONV])
        finally:
            await backend.stop(1.0)
            await runner.cleanup()
        s, u = fake_logprobs(guard.encode(guard.template.render(CONV)))
        assert verdicts[0].p_unsafe == pytest.approx(1.0 - 1.0 / (1.0 + math.exp(-(s - u))), abs=1e-12)
        body = fake.bodies[0]
        assert body["model"] == "guard" and body["max_tokens"] == guard.preset.judge_max_new_tokens
        if verdicts[0].unsafe:
            assert verdicts[0].categories == ("S1", "S10")

    asyncio.run(run())


def test_vllm_without_logprob_token_ids_is_a_clear_error(guard: PromptGuard) -> None:
    async def old_server(request: web.Request) -> web.StreamResponse:
        return web.json_response({"choices": [{"index": 0, "text": "safe", "logprobs": None}]})

    async def run() -> None:
        runner, url = await serve(old_server)
        backend = VllmBackend(guard, RemoteConfig(urls=(url,), retry=FAST_RETRY))
        await backend.start()
        try:
            with pytest.raises(Exception, match="logprob_token_ids"):
                await collect(backend, ScoreRequest(CONV))
        finally:
            await backend.stop(1.0)
            await runner.cleanup()

    asyncio.run(run())


# -- TGI -------------------------------------------------------------------------------------------------


class FakeTgi:
    """TGI's generate API (the root route huggingface_hub posts to): top_n_tokens details; 429
    'overloaded' (TGI past MAX_CONCURRENT_REQUESTS) on every other prompt's first try."""

    def __init__(self, guard: PromptGuard, drop_unsafe: bool = False) -> None:
        self.guard = guard
        self.bodies: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.rejected: set[str] = set()
        self.drop_unsafe = drop_unsafe

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.paths.append(request.path)
        body = await request.json()
        self.bodies.append(body)
        text = body["inputs"]
        if text not in self.rejected and len(self.rejected) % 2 == 0:
            self.rejected.add(text)
            return web.json_response({"error": "Model is overloaded", "error_type": "overloaded"}, status=429)
        self.rejected.add(text)
        bos = self.guard.tokenizer.bos_token or ""
        ids = self.guard.encode(bos + text)  # TGI adds the BOS itself
        lp_safe, lp_unsafe = fake_logprobs(ids)
        g = self.guard
        top = [
            {"id": g.safe_id, "text": g.preset.safe_word, "logprob": lp_safe, "special": False},
            {"id": g.unsafe_id, "text": g.preset.unsafe_word, "logprob": lp_unsafe, "special": False},
            {"id": 7, "text": "x", "logprob": -6.0, "special": False},
            {"id": 8, "text": "y", "logprob": -6.5, "special": False},
            {"id": 9, "text": "z", "logprob": -7.0, "special": False},
        ]
        if self.drop_unsafe:  # 'unsafe' ranks just below the top n
            top = [t for t in top if t["id"] != g.unsafe_id and float(t["logprob"]) > lp_unsafe]
            top += [
                {"id": 20 + k, "text": "w", "logprob": lp_unsafe + 0.01 * k, "special": False}
                for k in (1, 2, 3)
            ]
        top.sort(key=lambda t: -float(t["logprob"]))
        best = top[0]
        n = body["parameters"]["max_new_tokens"]
        return web.json_response(
            [
                {
                    "generated_text": str(best["text"]),
                    "details": {
                        "finish_reason": "length",
                        "generated_tokens": n,
                        "seed": None,
                        "prefill": [],
                        "tokens": [best] * n,
                        "top_tokens": [top] * n,
                    },
                }
            ]
        )


def test_tgi_request_fields_scores_and_retries(guard: PromptGuard) -> None:
    async def run() -> None:
        fakes = [FakeTgi(guard), FakeTgi(guard)]
        servers = [await serve(f.handle) for f in fakes]
        urls = tuple(u for _, u in servers)
        backend = TgiBackend(guard, RemoteConfig(urls=urls, max_concurrency=2, retry=FAST_RETRY))
        await backend.start()
        try:
            spec = CutSpec(CutKind.WORDS, every=4)
            got = await collect(backend, ScoreRequest(CONV, spec))
        finally:
            await backend.stop(1.0)
            for r, _ in servers:
                await r.cleanup()
        want = expected_scores(guard, CONV, spec, 1.0)
        assert [e for e, _ in got] == [e for e, _ in want]
        assert [p for _, p in got] == pytest.approx([p for _, p in want], abs=1e-12)
        bodies = [b for f in fakes for b in f.bodies]
        assert all(f.bodies for f in fakes)  # requests rotate over both replicas
        assert backend.dispatcher.retries >= 1 and len(bodies) == len(want) + backend.dispatcher.retries
        assert {p for f in fakes for p in f.paths} == {"/"}
        bos = guard.tokenizer.bos_token
        for body in bodies:
            assert set(body) == {"inputs", "parameters"}
            assert body["parameters"] == {
                "details": True,
                "do_sample": False,
                "max_new_tokens": 1,
                "top_n_tokens": 5,
            }
            assert not TGI_FORBIDDEN & set(body["parameters"])
            assert bos and not body["inputs"].startswith(bos)

    asyncio.run(run())


def test_tgi_missing_verdict_token_uses_the_documented_bound(guard: PromptGuard) -> None:
    async def run() -> list[tuple[int, float]]:
        runner, url = await serve(FakeTgi(guard, drop_unsafe=True).handle)
        backend = TgiBackend(guard, RemoteConfig(urls=(url,), retry=FAST_RETRY))
        await backend.start()
        try:
            return await collect(backend, ScoreRequest(CONV, CutSpec(CutKind.WORDS, every=2)))
        finally:
            await backend.stop(1.0)
            await runner.cleanup()

    got = asyncio.run(run())
    exact = expected_scores(guard, CONV, CutSpec(CutKind.WORDS, every=2), 1.0)
    both_missing = 0
    for (_, p), (_, q) in zip(got, exact, strict=True):
        if q > 0.5:  # 'safe' in the top n, 'unsafe' not: its bounded log-prob gives a lower bound
            assert p <= q + 1e-12 and q - p < 0.01  # (tight here: 'unsafe' is just out of the top n)
        else:  # both verdict tokens below the top n: nothing is known, the score is 0.5
            assert p == 0.5
            both_missing += 1
    assert both_missing < len(got)
    assert verdict_logprobs([(1, -0.5), (2, -3.0)], (1, 99)) == (-0.5, -3.0)  # 99 missing: the floor
    assert verdict_logprobs([(1, -0.5), (2, -3.0)], (99, 1, 2)) == (-3.0, -0.5, -3.0)


# -- shared machinery ------------------------------------------------------------------------------------


def test_dispatcher_gives_up_after_the_policy(guard: PromptGuard) -> None:
    calls: list[str] = []

    async def always_busy(url: str) -> int:
        calls.append(url)
        raise RemoteOverloaded("busy")

    d = Dispatcher(["http://a", "http://b"], 1, RetryPolicy(attempts=4, base_delay_s=0.0, max_delay_s=0.0))
    with pytest.raises(RemoteOverloaded):
        asyncio.run(d.call(always_busy))
    assert calls == ["http://a", "http://b", "http://a", "http://b"]


def test_retry_delays_grow_and_are_capped() -> None:
    import random

    p = RetryPolicy(attempts=10, base_delay_s=0.1, max_delay_s=1.0)
    rng = random.Random(0)
    for attempt in range(1, 10):
        d = p.delay(attempt, rng)
        assert 0.0 <= d <= min(1.0, 0.1 * 2 ** (attempt - 1))


def test_factory_and_its_errors(guard_dir: Path) -> None:
    cfg = GuardConfig(path=str(guard_dir))
    b = build_remote_backend("vllm", cfg, RemoteConfig(urls=("http://vllm-0:8000",), max_concurrency=8))
    assert isinstance(b, VllmBackend) and b.info().backend == "vllm"
    t = build_remote_backend(
        "tgi", cfg, RemoteConfig(urls=("http://tgi-0:80", "http://tgi-1:80"), max_concurrency=8)
    )
    assert isinstance(t, TgiBackend) and t.info().fingerprint != b.info().fingerprint
    with pytest.raises(ValueError, match="vllm, tgi"):
        build_remote_backend("triton", cfg, RemoteConfig(urls=("http://x",), max_concurrency=8))
    with pytest.raises(ValueError, match="http"):
        build_remote_backend("vllm", cfg, RemoteConfig(urls=("vllm-0:8000",), max_concurrency=8))
    with pytest.raises(ValueError, match="does not exist"):
        build_remote_backend(
            "vllm",
            GuardConfig(path=str(guard_dir / "nope")),
            RemoteConfig(urls=("http://x",), max_concurrency=8),
        )


def test_remote_prompts_match_the_local_guard(guard_dir: Path, guard: PromptGuard) -> None:
    """The tokenizer-only loader derives the same verdict ids and prompts as the full local loader."""
    from scorer_server.guards.loader import load_guard

    local = load_guard(GuardConfig(path=str(guard_dir)))
    assert (guard.safe_id, guard.unsafe_id) == (local.safe_id, local.unsafe_id)
    assert guard.template.render(CONV, 10) == local.template.render(CONV, 10)
    backend = VllmBackend(guard, RemoteConfig(urls=("http://x",), limits=Limits(max_cuts=3)))
    with pytest.raises(InvalidRequest, match="limit of 3"):
        backend.prompts(ScoreRequest(CONV, CutSpec(CutKind.WORDS, every=1)))


def test_engine_down_is_unavailable_with_a_retry_hint(guard: PromptGuard) -> None:
    import grpc

    from scorer_server.api.status import status_for
    from scorer_server.errors import EngineUnavailable

    req = ScoreRequest(Conversation.from_pair("q", "one two three four five six"), CutSpec())

    async def run() -> tuple[BaseException, int]:
        fake = FakeVllm(guard, busy_first=False)
        runner, url = await serve(fake.handle)
        backend = VllmBackend(guard, RemoteConfig(urls=(url,), retry=FAST_RETRY, retry_after_s=2.5))
        await backend.start()
        try:
            assert await collect(backend, req)  # up: answers
            await runner.cleanup()  # the engine goes away
            with pytest.raises(EngineUnavailable, match="down") as err:
                await collect(backend, req)
            return err.value, backend.dispatcher.retries
        finally:
            await backend.stop(1.0)

    exc, retries = asyncio.run(run())
    assert isinstance(exc, EngineUnavailable) and exc.retry_after_s == 2.5
    assert retries >= FAST_RETRY.attempts - 1  # retried before giving up
    status = status_for(exc)
    assert status.code is grpc.StatusCode.UNAVAILABLE  # not INTERNAL (ConnectionError)
    assert status.trailing_metadata() == (("retry-after-ms", "2500"),)
