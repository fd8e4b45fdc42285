"""The one-pass layout gives the per-cut definition's numbers, on every guard shape we support."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scorer_server.budget import TokenBudget
from scorer_server.engine.engine import EngineConfig, StarEngine, pack_rows
from scorer_server.guards.guard import Guard
from scorer_server.guards.guard_config import GuardConfig
from scorer_server.guards.loader import load_guard
from star_contract.types import Conversation, CutKind, CutSpec, Message, ScoreRequest
from star_testing.tiny_guard import TinyGuardSpec, preset_for, save_tiny_guard

GUARDS = {
    "llama": TinyGuardSpec(family="llama", tokenizer="bytelevel"),
    # merges across spaces, and a template whose guard writes "\n\n" before the verdict
    "llama-crossing": TinyGuardSpec(family="llama", tokenizer="bytelevel-crossing", header_newlines=False),
    "granite": TinyGuardSpec(family="granite", tokenizer="bytelevel"),
    # trims message whitespace, SentencePiece-like tokenizer, sliding-window layers, soft-capping
    "gemma": TinyGuardSpec(family="gemma", tokenizer="metaspace", sliding_window=48),
}

WORDS = [
    "Sure,",
    "here",
    "is",
    "how",
    "to",
    "do",
    "it",
    "step",
    "by",
    "step.",
    "First",
    "take",
    "the",
    "thing;",
    "then",
    "carefully",
    "rest",
    "I",
    "cannot",
    "help",
    "with",
    "that",
    "naïve",
    "café",
    "日本語",
    "🙂",
    "x",
    "42",
    "...",
    "\n",
    "  ",
    "\t",
    "safe",
    "unsafe",
    "Agent:",
    "<END",
    "{{",
    "}}",
]


@pytest.fixture(scope="module")
def guard_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("guards")
    return {name: save_tiny_guard(root / name, spec) for name, spec in GUARDS.items()}


def _load(path: Path, name: str, dtype: str = "float32", attn: str | None = None) -> Guard:
    family = GUARDS[name].family
    return load_guard(
        GuardConfig(path=str(path), preset=preset_for(family), dtype=dtype, attn_implementation=attn)
    )


@pytest.fixture(scope="module")
def guards(guard_dirs: dict[str, Path]) -> dict[str, Guard]:
    return {name: _load(path, name) for name, path in guard_dirs.items()}


def _max_diff(engine: StarEngine, reqs: list[ScoreRequest]) -> float:
    fast = engine.score(reqs)
    slow = engine.score(reqs, method="per_cut")
    diff = 0.0
    for a, b in zip(fast, slow, strict=True):
        assert [s.end for s in a.segments] == [s.end for s in b.segments]
        diff = max(diff, *(abs(x.p_safe - y.p_safe) for x, y in zip(a.segments, b.segments, strict=True)))
    return diff


responses = st.lists(st.sampled_from(WORDS), min_size=0, max_size=40).map(
    lambda ws: "".join(w if w.isspace() else w + " " for w in ws)
)
prompts = st.lists(st.sampled_from(WORDS), min_size=1, max_size=8).map(" ".join)


@st.composite
def cut_specs(draw: st.DrawFn, response: str) -> CutSpec:
    kind = draw(st.sampled_from(list(CutKind)))
    if kind is CutKind.OFFSETS:
        if not response:
            return CutSpec(kind=kind)
        offs = draw(st.lists(st.integers(1, len(response)), max_size=12, unique=True))
        return CutSpec(kind=kind, offsets=tuple(sorted(offs)))
    return CutSpec(kind=kind, every=draw(st.integers(1, 7)))


@st.composite
def requests(draw: st.DrawFn) -> ScoreRequest:
    response = draw(responses)
    history: list[Message] = []
    if draw(st.booleans()):
        history = [Message("user", draw(prompts)), Message("assistant", draw(prompts))]
    conv = Conversation((*history, Message("user", draw(prompts)), Message("assistant", response)))
    return ScoreRequest(conv, draw(cut_specs(response)))


@pytest.mark.parametrize("head_cache", [True, False])
@pytest.mark.parametrize("name", ["llama", "llama-crossing", "granite", "gemma"])
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(requests(), min_size=1, max_size=3))
def test_one_pass_equals_per_cut_on_random_conversations(
    guards: dict[str, Guard], name: str, head_cache: bool, batch: list[ScoreRequest]
) -> None:
    """Sliding-window guards (gemma: a window of 48) included: rows reach past the window."""
    budget = TokenBudget(max_batch_tokens=4000, max_row_tokens=700)
    engine = StarEngine(guards[name], EngineConfig(budget=budget, head_cache=head_cache))
    assert _max_diff(engine, batch) <= 1e-5


@pytest.mark.parametrize("name", list(GUARDS))
def test_fixed_edge_cases(guards: dict[str, Guard], name: str) -> None:
    engine = StarEngine(guards[name])
    reqs = [
        ScoreRequest(Conversation.from_pair("hi", "")),
        ScoreRequest(Conversation.from_pair("hi", "word")),
        ScoreRequest(Conversation.from_pair("hi", "   ")),
        ScoreRequest(Conversation.from_pair("¿qué?", "naïve café 日本語 🙂 " * 4), CutSpec(every=1)),
        ScoreRequest(
            Conversation.from_pair("hi", "trailing space at cut "), CutSpec(CutKind.OFFSETS, 0, (9, 15, 16))
        ),
    ]
    assert _max_diff(engine, reqs) <= 1e-5
    out = engine.score(reqs[:2])
    assert [s.end for s in out[0].segments] == [0]
    assert [s.end for s in out[1].segments] == [4]


@pytest.mark.parametrize("name", ["llama", "gemma"])
def test_long_response_split_over_several_rows_and_forwards(guards: dict[str, Guard], name: str) -> None:
    budget = TokenBudget(max_batch_tokens=1500, max_row_tokens=450)
    engine = StarEngine(guards[name], EngineConfig(budget=budget))
    long = " ".join(WORDS[:20]) * 6
    reqs = [ScoreRequest(Conversation.from_pair("tell me", long), CutSpec(every=3))]
    plan = engine.plan(reqs[0])
    items = engine.work_items(plan)
    assert len(items) > 2, "the response should need several rows"
    assert sorted(i for it in items for i in it.cut_indices) == list(range(len(plan.cuts)))
    batches = list(pack_rows(items, budget))
    assert len(batches) > 1
    for b in batches:
        assert len(b) * max(it.tokens for it in b) <= 1500 or len(b) == 1
    assert _max_diff(engine, reqs) <= 1e-5


def test_divergent_tokenisation_is_scored_through_longer_tails(guards: dict[str, Guard]) -> None:
    """A template that trims whitespace: prefixes ending in a space render differently from a
    literal prefix of the full prompt; those cuts get a longer private tail and stay exact."""
    engine = StarEngine(guards["gemma"])
    response = "one two three four five six"
    req = ScoreRequest(Conversation.from_pair("q", response), CutSpec(CutKind.OFFSETS, 0, (4, 8, 14, 19)))
    plan = engine.plan(req)
    suffix_len = len(plan.tails[0])
    assert any(len(t) != suffix_len for t in plan.tails[:-1]) or any(
        plan.shared[i] < plan.shared[i + 1] for i in range(len(plan.cuts) - 1)
    )
    assert _max_diff(engine, [req]) <= 1e-5


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_eager_and_sdpa_attention(guard_dirs: dict[str, Path], attn: str) -> None:
    engine = StarEngine(_load(guard_dirs["llama"], "llama", attn=attn))
    reqs = [ScoreRequest(Conversation.from_pair("q", " ".join(WORDS) * 2), CutSpec(every=4))]
    assert _max_diff(engine, reqs) <= 1e-5


def test_bfloat16_within_a_looser_tolerance(guard_dirs: dict[str, Path]) -> None:
    engine = StarEngine(_load(guard_dirs["llama"], "llama", dtype="bfloat16"))
    reqs = [ScoreRequest(Conversation.from_pair("q", " ".join(WORDS)), CutSpec(every=3))]
    assert _max_diff(engine, reqs) <= 0.05


def test_mixed_batch_matches_one_at_a_time(guards: dict[str, Guard]) -> None:
    engine = StarEngine(guards["llama"])
    reqs = [
        ScoreRequest(Conversation.from_pair("a", " ".join(WORDS[: 3 + 4 * k])), CutSpec(every=2))
        for k in range(5)
    ]
    together = engine.score(reqs)
    alone = [engine.score([r])[0] for r in reqs]
    for a, b in zip(together, alone, strict=True):
        assert max(abs(x.p_safe - y.p_safe) for x, y in zip(a.segments, b.segments, strict=True)) <= 1e-5


def test_temperature_divides_the_logit_difference(guards: dict[str, Guard]) -> None:
    engine = StarEngine(guards["llama"])
    conv = Conversation.from_pair("q", "Sure, here is how to do it")
    hot = engine.score([ScoreRequest(conv, temperature=4.0)])[0].segments[-1].p_safe
    cold = engine.score([ScoreRequest(conv, temperature=1.0)])[0].segments[-1].p_safe
    logit = torch.logit(torch.tensor(cold, dtype=torch.float64)).item()
    assert abs(torch.sigmoid(torch.tensor(logit / 4.0)).item() - hot) <= 1e-5


def test_judge_agrees_with_the_last_cut(guards: dict[str, Guard]) -> None:
    engine = StarEngine(guards["llama"])
    convs = [Conversation.from_pair("q", "Sure, here is how"), Conversation.from_pair("q", "I cannot help")]
    verdicts = engine.judge(convs)
    scores = engine.score([ScoreRequest(c) for c in convs])
    g = guards["llama"]
    assert g.preset.judge_max_new_tokens > 0
    for c, v, s in zip(convs, verdicts, scores, strict=True):
        assert abs(v.p_unsafe - (1 - s.segments[-1].p_safe)) <= 1e-5
        # the text is the guard's own greedy answer to this conversation alone (no batch, no padding)
        ids = torch.tensor([g.encode([g.template.render(c)])[0]])
        gen = g.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=g.preset.judge_max_new_tokens,
            do_sample=False,
            pad_token_id=engine.pad_id,
        )
        assert v.text == g.tokenizer.decode(gen[0, ids.shape[1] :], skip_special_tokens=True).strip()


@pytest.mark.gpu
def test_one_pass_equals_per_cut_on_cuda(guard_dirs: dict[str, Path]) -> None:
    g = load_guard(GuardConfig(path=str(guard_dirs["llama"]), device="cuda"))
    reqs = [ScoreRequest(Conversation.from_pair("q", " ".join(WORDS) * 3), CutSpec(every=2))]
    assert _max_diff(StarEngine(g), reqs) <= 1e-4
