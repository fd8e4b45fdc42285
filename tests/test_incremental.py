"""Incremental STAR (a response scored while it arrives): every cut equals the per-cut definition.

The reference is the engine's per-cut method on the finished response: one plain forward per cut of
`tokenize(render(conversation, response[:c]))`. Deltas are split at random, down to single characters,
so cuts fall inside BPE merges and the session has to roll its cache back. Sessions run the way the
server runs them: each push split into rows by the engine's budget (`IncrementalSession.pushes`) and
run by `StarEngine.run`, alone or in one forward with other sessions' pushes; only the batcher and the
event loop of the local backend are left out (tests/test_one_engine.py goes through them).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scorer_server.budget import TokenBudget
from scorer_server.engine.engine import EngineConfig, StarEngine
from scorer_server.engine.incremental import CutInput, IncrementalSession, SessionPush
from scorer_server.guards.guard_config import GuardConfig
from scorer_server.guards.loader import load_guard
from star_contract.errors import InvalidRequest
from star_contract.types import Convention, Conversation, CutKind, CutSpec, ScoreRequest, Segment
from star_testing.real_guards import save_named_real_guard
from star_testing.sessions import run, stream
from star_testing.tiny_guard import TinyGuardSpec, save_tiny_guard

WORDS = ["Sure,", "first", "mix", "the", "flour", "then", "bake", "it.", "Done!", "ünï", "🙂", "x", "220"]
SPACES = [" ", " ", " ", "  ", "\n", "\n\n", "\t"]


ROW_TOKENS = 1024
"""A row budget small enough that a long push is split over several rows."""


def tiny_engine(tmp_path_factory: pytest.TempPathFactory, tokenizer: str) -> StarEngine:
    spec = TinyGuardSpec(tokenizer=tokenizer)
    guard = load_guard(GuardConfig(path=str(save_tiny_guard(tmp_path_factory.mktemp("g") / "g", spec))))
    return StarEngine(guard, EngineConfig(budget=TokenBudget(max_row_tokens=ROW_TOKENS)))


def open_session(engine: StarEngine, conv: Conversation, cuts: CutSpec) -> IncrementalSession:
    return IncrementalSession(engine.guard, conv, cuts, limits=engine.config.limits)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> StarEngine:
    """A byte-level BPE whose merges cross spaces: a delta can change the previous token (and every
    prompt is tokenised whole: incremental tokenisation needs a splitting pre-tokenizer)."""
    return tiny_engine(tmp_path_factory, "bytelevel-crossing")


@pytest.fixture(scope="module", params=["bytelevel", "metaspace"])
def split_engine(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> StarEngine:
    """Tokenizers that split text into pieces first (GPT-style regex, Metaspace): prompts are tokenised
    incrementally, and guard-token cuts are allowed."""
    return tiny_engine(tmp_path_factory, request.param)


def assert_matches_per_cut(
    engine: StarEngine, conv: Conversation, got: list[Segment], every: int, kind: CutKind = CutKind.WORDS
) -> None:
    want = engine.score([ScoreRequest(conv, CutSpec(kind, every))], method="per_cut")[0].segments
    assert [s.end for s in got] == [s.end for s in want]
    assert max(abs(a.p_safe - b.p_safe) for a, b in zip(got, want, strict=True)) <= 1e-5


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    words=st.lists(st.sampled_from(WORDS), min_size=0, max_size=18),
    gaps=st.lists(st.sampled_from(SPACES), min_size=18, max_size=18),
    trailing=st.sampled_from(["", " ", "\n"]),
    sizes=st.lists(st.integers(1, 9), min_size=1, max_size=6),
    every=st.integers(1, 4),
)
def test_random_deltas_equal_per_cut(
    engine: StarEngine, words: list[str], gaps: list[str], trailing: str, sizes: list[int], every: int
) -> None:
    response = "".join(w + g for w, g in zip(words, gaps, strict=False)).rstrip() + trailing
    conv = Conversation.from_pair("How do I bake bread?", response)
    session = open_session(engine, conv.with_response(""), CutSpec(CutKind.WORDS, every))
    assert_matches_per_cut(engine, conv, stream(engine, session, response, sizes), every)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    words=st.lists(st.sampled_from(WORDS), min_size=0, max_size=30),
    gaps=st.lists(st.sampled_from(SPACES), min_size=30, max_size=30),
    sizes=st.lists(st.integers(1, 12), min_size=1, max_size=6),
    every=st.integers(1, 6),
    kind=st.sampled_from([CutKind.WORDS, CutKind.GUARD_TOKENS]),
)
def test_incremental_tokenisation_and_guard_token_cuts_equal_per_cut(
    split_engine: StarEngine, words: list[str], gaps: list[str], sizes: list[int], every: int, kind: CutKind
) -> None:
    """Prompts tokenised from the previous cut's (not whole), cuts every M words or N guard tokens:
    the same cuts as `plan_cuts` on the finished response, each scored as one plain forward."""
    response = "".join(w + g for w, g in zip(words, gaps, strict=False)).rstrip()
    conv = Conversation.from_pair("How do I bake bread?", response)
    session = open_session(split_engine, conv.with_response(""), CutSpec(kind, every))
    assert_matches_per_cut(split_engine, conv, stream(split_engine, session, response, sizes), every, kind)
    assert session.prompt_tokens.incremental and session.prompt_tokens.fallbacks <= session.cuts_planned


@pytest.mark.parametrize("every", [1, 2])
def test_guard_token_cuts_wait_until_the_token_is_final(split_engine: StarEngine, every: int) -> None:
    """Single-character deltas: "f", "fl", ... are tokens of their own until the word is complete, so a
    cut at a token's end may only be emitted once later text can no longer merge it."""
    conv = Conversation.from_pair("q", "Sure, first mix the flour\n\nthen bake it at 220 C. Done!")
    session = open_session(split_engine, conv.with_response(""), CutSpec(CutKind.GUARD_TOKENS, every))
    assert_matches_per_cut(
        split_engine, conv, stream(split_engine, session, conv.response, [1]), every, CutKind.GUARD_TOKENS
    )


def test_sessions_start_from_the_shared_template_head(split_engine: StarEngine) -> None:
    """A new session, and one whose cache was evicted, copies the template head's keys and values from
    the engine's head cache instead of computing them; scores are unchanged."""
    head = split_engine.head
    assert head is not None and head.tokens > 10
    conv = Conversation.from_pair("How do I bake bread?", "Sure, first mix the flour then bake it. Done!")
    session = open_session(split_engine, conv.with_response(""), CutSpec(CutKind.WORDS, 2))
    before = head.reused
    got = run(split_engine, session, session.plan_push(conv.response[:20]))
    assert session.state.ids[: head.tokens] == head.ids
    assert head.reused - before == head.tokens
    assert session.state.trunk_tokens == len(session.state.ids) - head.tokens  # the head was not computed
    session.state.evict()
    got += run(split_engine, session, session.plan_push(conv.response[20:]))
    got += run(split_engine, session, session.plan_close())
    assert head.reused - before == 2 * head.tokens
    assert_matches_per_cut(split_engine, conv, got, 2)


def test_single_characters_multi_turn_and_rollbacks(engine: StarEngine) -> None:
    conv = Conversation.from_dicts(
        [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "How do I bake bread?"},
            {"role": "assistant", "content": "Sure,  first mix the flour\n\nthen bake it at 220 C. Done!"},
        ]
    )
    session = open_session(engine, conv.with_response(""), CutSpec(CutKind.WORDS, 2))
    got = stream(engine, session, conv.response, [1])
    assert_matches_per_cut(engine, conv, got, 2)


def test_cache_rolls_back_to_the_common_prefix(engine: StarEngine) -> None:
    """What a delta that re-merges cached tokens triggers: the cache is cut back to the prefix it shares
    with the new input, and the next cut is still exact."""
    conv = Conversation.from_pair("q", "one two three four")
    session = open_session(engine, conv.with_response(""), CutSpec(CutKind.WORDS, 1))
    raw = Convention.RAW
    engine.run([SessionPush(session.state, [CutInput(1, [5, 6, 7, 8, 9, 10], 5)], raw, 1.0)])
    assert session.cache_tokens == 5 and session.state.tail_tokens == 1
    engine.run([SessionPush(session.state, [CutInput(2, [5, 6, 11, 12], 3)], raw, 1.0)])
    assert session.state.rollbacks == 1 and session.cache_tokens == 3
    assert session.state.trunk_tokens == 5 + 1
    assert_matches_per_cut(engine, conv, stream(engine, session, conv.response, [2]), 1)


def test_sessions_batched_in_one_forward_with_evictions_equal_per_cut(engine: StarEngine) -> None:
    """What the server does: the next cut of every open session in one forward (rows padded to the
    longest cached trunk), with caches evicted at random between rounds (recomputed, still exact)."""
    rng = random.Random(3)
    convs = [
        Conversation.from_pair("How do I bake bread?", " ".join(rng.choice(WORDS) for _ in range(n)))
        for n in (0, 3, 12, 25, 40)
    ]
    sessions = [open_session(engine, c.with_response(""), CutSpec(CutKind.WORDS, 2)) for c in convs]
    got: list[list[Segment]] = [[] for _ in sessions]
    sent = [0] * len(sessions)
    widest = 0
    while not all(s.closed for s in sessions):
        pending = []
        for k, s in enumerate(sessions):
            if s.closed:
                continue
            text, n = convs[k].response, rng.randint(1, 7)
            pending.append(
                (k, s.plan_push(text[sent[k] : sent[k] + n]) if sent[k] < len(text) else s.plan_close())
            )
            sent[k] += n
        while any(inputs for _, inputs in pending):
            batch = [(k, inputs.pop(0)) for k, inputs in pending if inputs]
            widest = max(widest, len(batch))
            pushes = [sessions[k].pushes([i], ROW_TOKENS)[0] for k, i in batch]
            for (k, _), segs in zip(batch, engine.run(pushes).segments, strict=True):
                got[k] += segs
        if rng.random() < 0.4:
            rng.choice(sessions).state.evict()
    for conv, segs in zip(convs, got, strict=True):
        assert_matches_per_cut(engine, conv, segs, 2)
    assert widest >= 3 and sum(s.state.evictions for s in sessions) >= 2


def assert_one_push_shares_forwards(eng: StarEngine, sizes: list[int]) -> None:
    """A push that completes many cuts (text arriving in bursts, the whole response at once) runs them
    as one row per forward: the new trunk once and a tail per cut, up to the engine's row budget; every
    cut still equals one plain forward of its prompt."""
    rng = random.Random(5)
    conv = Conversation.from_pair("How do I bake bread?", " ".join(rng.choice(WORDS) for _ in range(90)))
    forwards: list[int] = []
    hook = eng.guard.model.base_model.register_forward_hook(lambda *_: forwards.append(1))
    try:
        session = open_session(eng, conv.with_response(""), CutSpec(CutKind.WORDS, 1))
        got = stream(eng, session, conv.response, sizes)
    finally:
        hook.remove()
    assert_matches_per_cut(eng, conv, got, 1)
    if sizes == [10_000]:  # all 90 cuts in one push: a few forwards, each within the tail budget
        tails = session.state.tail_tokens
        assert len(got) == 90 and len(forwards) <= tails // (ROW_TOKENS // 2) + 1 < 90


PUSH_SIZES = pytest.mark.parametrize("sizes", [[10_000], [50], [13, 1, 29]])
# Two tests, not one parametrised on the engine too: split_engine has its own params, so a single test
# would run the crossing engine's cases once per split_engine param.


@PUSH_SIZES
def test_the_cuts_of_one_push_share_forwards_crossing(engine: StarEngine, sizes: list[int]) -> None:
    assert_one_push_shares_forwards(engine, sizes)


@PUSH_SIZES
def test_the_cuts_of_one_push_share_forwards_split(split_engine: StarEngine, sizes: list[int]) -> None:
    assert_one_push_shares_forwards(split_engine, sizes)


def test_batched_sessions_with_many_cuts_a_push_equal_per_cut(engine: StarEngine) -> None:
    """What the server does with bursts: every open session's whole push in one forward (one row each,
    several cuts a row), caches evicted at random between rounds."""
    rng = random.Random(7)
    convs = [
        Conversation.from_pair("How do I bake bread?", " ".join(rng.choice(WORDS) for _ in range(n)))
        for n in (4, 17, 30)
    ]
    sessions = [open_session(engine, c.with_response(""), CutSpec(CutKind.WORDS, 1)) for c in convs]
    got: list[list[Segment]] = [[] for _ in sessions]
    sent = [0] * len(sessions)
    while not all(s.closed for s in sessions):
        planned = []
        for k, s in enumerate(sessions):
            if not s.closed:
                text, n = convs[k].response, rng.randint(5, 40)
                planned.append(
                    (k, s.plan_push(text[sent[k] : sent[k] + n]) if sent[k] < len(text) else s.plan_close())
                )
                sent[k] += n
        pushes = [(k, sessions[k].pushes(inputs, ROW_TOKENS)) for k, inputs in planned if inputs]
        while any(p for _, p in pushes):  # round r: every session's r-th row, in one forward
            batch = [(k, p.pop(0)) for k, p in pushes if p]
            for (k, _), segs in zip(batch, engine.run([w for _, w in batch]).segments, strict=True):
                got[k] += segs
        if rng.random() < 0.4:
            rng.choice(sessions).state.evict()
    for conv, segs in zip(convs, got, strict=True):
        assert_matches_per_cut(engine, conv, segs, 1)


def test_each_cut_costs_its_new_tokens_not_the_prefix(engine: StarEngine) -> None:
    rng = random.Random(0)
    response = " ".join(rng.choice(WORDS[:9]) for _ in range(200))
    conv = Conversation.from_pair("How do I bake bread?", response)
    session = open_session(engine, conv.with_response(""), CutSpec(CutKind.WORDS, 5))
    got = stream(engine, session, response, [8])
    prompt = len(engine.guard.encode([engine.guard.template.render(conv)])[0])
    plan = engine.plan(ScoreRequest(conv, CutSpec(CutKind.WORDS, 5)))
    rescore = sum(plan.per_cut_tokens)
    computed = session.state.trunk_tokens + session.state.tail_tokens
    assert len(got) == 40 and computed < rescore / 5  # measured: about 1/13 of re-scoring each prefix
    assert session.cache_tokens < prompt  # the cache holds the stable trunk, never a tail


def test_cut_spacing_and_closed_sessions(engine: StarEngine) -> None:
    conv = Conversation.from_pair("q", "")
    with pytest.raises(InvalidRequest, match="merges across word boundaries"):
        open_session(engine, conv, CutSpec(CutKind.GUARD_TOKENS, 3))
    with pytest.raises(InvalidRequest, match="explicit offsets"):
        open_session(engine, conv, CutSpec(CutKind.OFFSETS, 0, (1,)))
    session = open_session(engine, conv, CutSpec(CutKind.WORDS, 5))
    assert run(engine, session, session.plan_close())[0].end == 0  # an empty response: its one cut
    with pytest.raises(InvalidRequest, match="closed"):
        session.plan_push("more")


def test_real_llama_guard_3_template_and_tokenizer(tmp_path: Path, guard_templates: Path) -> None:
    path, real = save_named_real_guard(tmp_path / "lg3", "llama-guard-3-1b", guard_templates)
    engine = StarEngine(load_guard(GuardConfig(path=str(path), preset=real.preset)))
    conv = Conversation.from_pair(
        "How do I bake bread?", "Voilà — mix 200g flour,\n\n then bake 🙂 at 220°C!"
    )
    session = open_session(engine, conv.with_response(""), CutSpec(CutKind.WORDS, 1))
    assert_matches_per_cut(engine, conv, stream(engine, session, conv.response, [3, 1, 2]), 1)
    assert session.prompt_tokens.incremental and session.prompt_tokens.partial > 0
    session = open_session(engine, conv.with_response(""), CutSpec(CutKind.GUARD_TOKENS, 2))
    got = stream(engine, session, conv.response, [1, 2])
    assert_matches_per_cut(engine, conv, got, 2, CutKind.GUARD_TOKENS)
