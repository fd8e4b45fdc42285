"""One engine: Score items and live-moderation pushes are rows of the same forward.

Every score is compared with the per-cut oracle (`forward_prompts`: one plain forward of each cut's whole
prompt, no cache shared with the engine). Sessions run as the local backend runs them: `StarEngine.run`
over their pushes (alone, or together with Score items and other sessions), and in the last test
through the backend itself, batcher included.
"""

from __future__ import annotations

import asyncio
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scorer_server.backends.local import LocalBackend, LocalBackendConfig
from scorer_server.budget import TokenBudget
from scorer_server.config import BatchingSettings
from scorer_server.engine.caches import attention_layout
from scorer_server.engine.engine import EngineConfig, StarEngine
from scorer_server.engine.incremental import IncrementalSession
from scorer_server.engine.work import Work
from scorer_server.guards.guard_config import GuardConfig
from scorer_server.guards.loader import load_guard
from star_contract.types import Conversation, CutKind, CutSpec, ModerateOptions, ScoreRequest, Segment
from star_testing.tiny_guard import TinyGuardSpec, save_tiny_guard

WORDS = ["Sure,", "mix", "the", "flour", "then", "bake", "it.", "ünï", "🙂", "220", "x"]
PROMPT = "How do I bake bread?"


@pytest.fixture(scope="module", params=["llama", "gemma"])
def engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> StarEngine:
    """The tiny Llama guard, and a Gemma-2-shaped one with sliding-window layers (a window of 48
    tokens: its prompts here reach 300 and more)."""
    family = request.param
    spec = TinyGuardSpec(family=family, tokenizer="metaspace" if family == "gemma" else "bytelevel")
    path = save_tiny_guard(tmp_path_factory.mktemp(family) / "g", spec)
    preset = "shieldgemma" if family == "gemma" else "llama-guard-3"
    guard = load_guard(GuardConfig(path=str(path), preset=preset))
    return StarEngine(guard, EngineConfig(budget=TokenBudget(max_row_tokens=600)))


def oracle(engine: StarEngine, conv: Conversation, ends: list[int]) -> list[float]:
    req = ScoreRequest(conv, CutSpec(CutKind.OFFSETS, 0, tuple(ends)))
    return [s.p_safe for s in engine.score([req], method="per_cut")[0].segments]


def session_for(engine: StarEngine, every: int) -> IncrementalSession:
    window = attention_layout(engine.guard.model).window
    conv = Conversation.from_pair(PROMPT, "")
    return IncrementalSession(engine.guard, conv, CutSpec(CutKind.WORDS, every), window=window)


def text(rng: random.Random, words: int) -> str:
    return "".join(rng.choice(WORDS) + rng.choice([" ", " ", "  ", "\n"]) for _ in range(words)).rstrip()


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), n_sessions=st.integers(1, 3), n_score=st.integers(1, 3))
def test_score_items_and_session_pushes_in_one_forward_equal_the_per_cut_oracle(
    engine: StarEngine, seed: int, n_sessions: int, n_score: int
) -> None:
    """Each forward holds every open session's next push and Score items beside them; caches are evicted
    at random between forwards. Every cut of both kinds equals one plain forward of its prompt."""
    rng = random.Random(seed)
    texts = [text(rng, rng.randint(5, 60)) for _ in range(n_sessions)]
    sessions = [session_for(engine, rng.randint(1, 3)) for _ in texts]
    sent = [0] * n_sessions
    got: list[list[Segment]] = [[] for _ in sessions]
    scores: list[tuple[ScoreRequest, list[Segment]]] = []
    forwards: list[int] = []
    hook = engine.guard.model.base_model.register_forward_hook(lambda *_: forwards.append(1))
    try:
        while not all(s.closed for s in sessions):
            works: list[Work] = []
            owners: list[int] = []  # session index, or -1 - request index
            later: list[tuple[int, Work]] = []  # a session's further rows run after its first, alone
            for k, s in enumerate(sessions):
                if s.closed:
                    continue
                n = rng.randint(1, 25)
                delta = texts[k][sent[k] : sent[k] + n]
                inputs = s.plan_push(delta) if sent[k] < len(texts[k]) else s.plan_close()
                sent[k] += n
                pushes = s.pushes(inputs, engine.config.budget.max_row_tokens)
                works += pushes[:1]
                owners += [k] * len(pushes[:1])
                later += [(k, p) for p in pushes[1:]]
            for _ in range(n_score if rng.random() < 0.5 else 0):
                req = ScoreRequest(
                    Conversation.from_pair(PROMPT, text(rng, rng.randint(1, 30))), CutSpec(every=2)
                )
                for item in engine.work_items(engine.plan(req)):
                    works.append(item)
                    owners.append(-1 - len(scores))
                scores.append((req, []))
            if not works:
                continue
            before = len(forwards)
            ran = engine.run(works)
            assert len(forwards) - before == 1  # Score items and pushes: one forward
            for owner, segs in zip(owners, ran.segments, strict=True):
                if owner >= 0:
                    got[owner] += segs
                else:
                    scores[-1 - owner][1].extend(segs)
            for k, push in later:
                got[k] += engine.run([push]).segments[0]
            if rng.random() < 0.3:
                rng.choice(sessions).state.evict()
    finally:
        hook.remove()
    for t, segs in zip(texts, got, strict=True):
        want = oracle(engine, Conversation.from_pair(PROMPT, t), [s.end for s in segs])
        assert max(abs(a.p_safe - b) for a, b in zip(segs, want, strict=True)) <= 1e-5
    for req, segs in scores:
        segs.sort(key=lambda s: s.end)
        want = oracle(engine, req.conversation, [s.end for s in segs])
        assert max(abs(a.p_safe - b) for a, b in zip(segs, want, strict=True)) <= 1e-5


def test_sessions_stay_exact_past_a_sliding_window(engine: StarEngine) -> None:
    """Gemma's window is 48 tokens; the session's prompt grows past 400. Sliding layers keep only the keys
    a later query can still see (plus slack), full layers keep everything, and every cut is exact."""
    layout = attention_layout(engine.guard.model)
    rng = random.Random(11)
    response = text(rng, 150)
    session = session_for(engine, 2)
    segs: list[Segment] = []
    for i in range(0, len(response), 7):
        for push in session.pushes(session.plan_push(response[i : i + 7]), 600):
            segs += engine.run([push]).segments[0]
    for push in session.pushes(session.plan_close(), 600):
        segs += engine.run([push]).segments[0]
    want = oracle(engine, Conversation.from_pair(PROMPT, response), [s.end for s in segs])
    assert max(abs(a.p_safe - b) for a, b in zip(segs, want, strict=True)) <= 1e-5
    state = session.state
    if layout.window is None:
        assert set(state.first) == {0}
        return
    assert len(state.ids) > 4 * layout.window
    slack = max(32, layout.window // 4)
    for layer, sliding in enumerate(layout.sliding):
        held = len(state.ids) - state.first[layer]  # positions whose keys the layer keeps
        if sliding:  # dropped what no query can see: at most about two windows, not the whole prompt
            assert state.first[layer] > 0 and held <= 2 * (layout.window + slack)
        else:
            assert state.first[layer] == 0 and held == len(state.ids)


def test_tails_read_their_trunk_in_place(engine: StarEngine) -> None:
    """The keys and values a forward holds are one row's cache plus its own tokens (its tails packed in
    chunks: some padding), however many cuts (tails) the row has: no copy of the trunk per tail."""
    cfg = engine.guard.model.config.get_text_config()
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    per_token = 2 * cfg.num_key_value_heads * head_dim * 4  # keys and values, float32, one layer
    conv = Conversation.from_pair(PROMPT, " ".join(WORDS * 3))
    for every in (1, 8):
        item = engine.work_items(engine.plan(ScoreRequest(conv, CutSpec(every=every))))[0]
        ran = engine.run([item])
        row = ran.rows[0]
        own = cfg.num_hidden_layers * per_token * (row.start + len(row.ids))
        assert (
            own <= ran.kv_bytes <= 2 * own
        )  # its own tokens (tails packed in chunks), never a copy per tail


def test_live_sessions_through_the_local_backend_equal_the_per_cut_oracle(
    engine: StarEngine,
) -> None:
    """The server's own path, batcher and session pool included: sessions pushing concurrently beside
    Score requests, a session cache budget small enough that caches are evicted."""
    assert engine.guard.config is not None
    guard_dir, preset = engine.guard.config.path, engine.guard.preset.name
    batching = BatchingSettings(warmup=False, session_cache_mib=0.02, max_wait_ms=2.0)
    backend = LocalBackend(LocalBackendConfig(GuardConfig(path=str(guard_dir), preset=preset), batching))
    rng = random.Random(5)
    texts = [text(rng, rng.randint(10, 40)) for _ in range(4)]

    async def one(t: str, seed: int) -> list[Segment]:
        r = random.Random(seed)
        session = backend.open_session(Conversation.from_pair(PROMPT, ""), ModerateOptions(every=2))
        out: list[Segment] = []
        try:
            i = 0
            while i < len(t):
                n = r.randint(1, 12)
                out += await session.push(t[i : i + n])
                i += n
            out += await session.close()
        finally:
            session.release()
        return out

    async def score(t: str) -> list[Segment]:
        out: list[Segment] = []
        async for part in backend.score(ScoreRequest(Conversation.from_pair(PROMPT, t), CutSpec(every=1))):
            out += part.segments
        return sorted(out, key=lambda s: s.end)  # parts arrive as they finish

    async def main() -> tuple[list[list[Segment]], list[list[Segment]]]:
        await backend.start()
        try:
            got = await asyncio.gather(*[one(t, k) for k, t in enumerate(texts)], *[score(t) for t in texts])
        finally:
            await backend.stop(1.0)
        return list(got[: len(texts)]), list(got[len(texts) :])

    live, scored = asyncio.run(main())
    assert backend._sessions.evictions > 0
    for t, segs in [*zip(texts, live, strict=True), *zip(texts, scored, strict=True)]:
        want = oracle(engine, Conversation.from_pair(PROMPT, t), [s.end for s in segs])
        assert max(abs(a.p_safe - b) for a, b in zip(segs, want, strict=True)) <= 1e-5
