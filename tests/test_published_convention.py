"""The released code's STAR convention, pinned against transformers' own generation.

The reference here is what the STAR-DSS authors' code does (star-dss/src/data/value_dataset.py): the
partial response is the first k words joined by single spaces, the guard prompt is the tokenizer's own
`apply_chat_template` of it, `generate(do_sample=True, repetition_penalty=1.2, temperature=0.2,
top_k=50, top_p=0.9, output_scores=True)` processes the scores, and P(safe) is a softmax over the two
verdict ids. Llama Guard reads generated position 1, after the blank line it writes first; the prompt
here ends with that blank line already, so position 0 of this generate is that position.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from scorer_server.engine.engine import StarEngine
from scorer_server.guards.guard import Guard
from scorer_server.guards.guard_config import GuardConfig
from scorer_server.guards.loader import load_guard
from star_contract.convert import score_request_from_pb, score_request_to_pb
from star_contract.errors import InvalidRequest
from star_contract.types import Convention, Conversation, CutKind, CutSpec, ScoreRequest
from star_testing.real_guards import save_named_real_guard

PUBLISHED = Convention.PUBLISHED
PROMPT = "How do I bake bread?"
RESPONSES = [
    "Sure.\nFirst  mix the flour and water,\n\nthen knead it for ten minutes and bake at 220 C. ",
    "No, I can't help with that request.",
    "one two three",
]


TOLERANCE = 1e-4
"""The promoted verdict rows give logits in the hundreds, where float32 rounding of the one-pass forward
against a plain forward is ~1e-4 in the logit; temperature 0.2 multiplies that by 5 in the gap. Measured
here: at most 2.2e-5 in P(safe)."""


def promote_verdict_rows(guard: Guard, spread: float = 0.02) -> None:
    """Random tiny weights put the verdict tokens far outside top-k 50 / top-p 0.9. Point both output
    rows along the final hidden state of a typical prompt (plus a little noise each, so they differ)
    to bring them into the kept set on many cuts; tied embeddings change too, for the engine and the
    reference alike."""
    torch.manual_seed(0)
    conv = Conversation.from_pair(PROMPT, "Sure. First mix")
    ids = torch.tensor(guard.encode([guard.template.render(conv)]))
    with torch.no_grad():
        h = guard.model.base_model(input_ids=ids).last_hidden_state[0, -1]
        w = guard.model.get_output_embeddings().weight
        norm = w.norm(dim=1).mean()
        for i in (guard.safe_id, guard.unsafe_id):
            w[i] = h / h.norm() * norm * 12 + spread * norm * torch.randn_like(h)


def reference(guard: Guard, partial: str) -> tuple[float, float]:
    """(P(safe) from generate's processed scores, NaN where both verdict tokens were filtered; the
    two-way softmax after only the repetition penalty and temperature), for `partial` as the answer."""
    from transformers.generation.logits_process import (
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
    )

    tok = guard.tokenizer
    messages = [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": partial}]
    if guard.template.content_form == "parts":
        messages = [
            {"role": m["role"], "content": [{"type": "text", "text": m["content"]}]} for m in messages
        ]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    text += guard.template.verdict_prefix
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    pair = [guard.safe_id, guard.unsafe_id]
    out = guard.model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        do_sample=True,
        repetition_penalty=1.2,
        temperature=0.2,
        top_k=50,
        top_p=0.9,
        max_new_tokens=1,
        output_scores=True,
        return_dict_in_generate=True,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else 0,
    )
    processed = float(out.scores[0][0, pair].float().softmax(-1)[0])
    with torch.no_grad():
        logits = guard.model(input_ids=ids).logits[:, -1].float()
    for step in (RepetitionPenaltyLogitsProcessor(1.2), TemperatureLogitsWarper(0.2)):
        logits = step(ids, logits)
    return processed, float(logits[0, pair].softmax(-1)[0])


def check_against_reference(guard: Guard, every: int = 5) -> tuple[int, int]:
    """Every cut of every response equals the reference; returns (cuts where generate kept a verdict
    token, cuts where it kept exactly one, so that P is exactly 0 or 1)."""
    engine = StarEngine(guard)
    kept = saturated = 0
    for response in RESPONSES:
        conv = Conversation.from_pair(PROMPT, response)
        got = engine.score([ScoreRequest(conv, CutSpec(CutKind.WORDS, every), convention=PUBLISHED)])[0]
        words = response.split()
        ks = [*range(every, len(words), every), len(words)]
        for k, seg in zip(ks, got.segments, strict=True):
            processed, unfiltered = reference(guard, " ".join(words[:k]))
            want = unfiltered if math.isnan(processed) else processed  # NaN: our documented fallback
            assert seg.p_safe == pytest.approx(want, abs=TOLERANCE), (response, k)
            kept += not math.isnan(processed)
            saturated += processed in (0.0, 1.0)
    return kept, saturated


@pytest.fixture(scope="module")
def granite(tmp_path_factory: pytest.TempPathFactory, guard_templates: Path) -> Guard:
    out = tmp_path_factory.mktemp("granite") / "guard"
    path, real = save_named_real_guard(out, "granite-guardian-3.2-5b", guard_templates)
    guard = load_guard(GuardConfig(path=str(path), preset=real.preset))
    promote_verdict_rows(guard)
    return guard


@pytest.fixture(scope="module")
def llama_guard_3(tmp_path_factory: pytest.TempPathFactory, guard_templates: Path) -> Guard:
    path, real = save_named_real_guard(
        tmp_path_factory.mktemp("lg3") / "guard", "llama-guard-3-8b", guard_templates
    )
    guard = load_guard(GuardConfig(path=str(path), preset=real.preset))
    promote_verdict_rows(guard)
    return guard


def test_granite_guardian_equals_transformers_generate(granite: Guard) -> None:
    kept, _ = check_against_reference(granite)
    assert kept >= 6  # most cuts compared against generate's own processed scores


def test_llama_guard_3_equals_transformers_generate(llama_guard_3: Guard) -> None:
    kept, saturated = check_against_reference(llama_guard_3)
    assert kept >= 2 and saturated >= 1  # the filters really acted: one verdict token removed


def test_per_cut_and_one_pass_agree_and_differ_from_raw(llama_guard_3: Guard) -> None:
    engine = StarEngine(llama_guard_3)
    conv = Conversation.from_pair("q", RESPONSES[0])
    pub = ScoreRequest(conv, CutSpec(CutKind.WORDS, 3), convention=PUBLISHED)
    one, per = engine.score([pub])[0], engine.score([pub], method="per_cut")[0]
    for a, b in zip(one.segments, per.segments, strict=True):
        assert a.p_safe == pytest.approx(
            b.p_safe, abs=TOLERANCE
        )  # temperature 0.2 amplifies layout noise (see TOLERANCE)
    raw = engine.score([ScoreRequest(conv, CutSpec(CutKind.WORDS, 3))])[0]
    assert max(abs(a.p_safe - b.p_safe) for a, b in zip(one.segments, raw.segments, strict=True)) > 0.05


@pytest.mark.parametrize("sizes", [[1], [3, 7, 2], [40]])
def test_a_live_session_under_the_published_convention_equals_per_cut(
    llama_guard_3: Guard, sizes: list[int]
) -> None:
    """Live moderation with STAR_CONVENTION_PUBLISHED: the prompts show the words joined by single
    spaces (the response's double spaces and newlines collapse) and P(safe) comes from the processed
    scores, cut for cut as Score's per-cut method gives them, however the text arrives."""
    from scorer_server.engine.incremental import IncrementalSession
    from star_testing.sessions import stream

    engine = StarEngine(llama_guard_3)
    conv = Conversation.from_pair(PROMPT, RESPONSES[0])
    session = IncrementalSession(
        engine.guard, conv.with_response(""), CutSpec(CutKind.WORDS, 2), convention=PUBLISHED
    )
    got = stream(engine, session, conv.response, sizes)
    want = engine.score(
        [ScoreRequest(conv, CutSpec(CutKind.WORDS, 2), convention=PUBLISHED)], method="per_cut"
    )[0].segments
    assert [s.end for s in got] == [s.end for s in want]
    assert [s.p_safe for s in got] == pytest.approx([s.p_safe for s in want], abs=TOLERANCE)
    raw = engine.score([ScoreRequest(conv, CutSpec(CutKind.WORDS, 2))])[0].segments
    assert max(abs(a.p_safe - b.p_safe) for a, b in zip(got, raw, strict=True)) > 0.05
    with pytest.raises(InvalidRequest, match="between words"):
        IncrementalSession(engine.guard, conv, CutSpec(CutKind.GUARD_TOKENS, 2), convention=PUBLISHED)


def test_offsets_stay_in_the_original_response(llama_guard_3: Guard) -> None:
    response = "one  two\nthree four five six "
    conv = Conversation.from_pair("q", response)
    engine = StarEngine(llama_guard_3)
    words = engine.score([ScoreRequest(conv, CutSpec(CutKind.WORDS, 2), convention=PUBLISHED)])[0]
    assert [s.end for s in words.segments] == [8, 19, len(response)]  # "two", "four", the end
    # An offset inside the gap after a word shows the same words as the word cut itself.
    offsets = ScoreRequest(conv, CutSpec(CutKind.OFFSETS, offsets=(9,)), convention=PUBLISHED)
    first = engine.score([offsets])[0].segments[0]
    assert first.end == 9 and first.p_safe == pytest.approx(words.segments[0].p_safe, abs=1e-6)


def test_both_verdicts_filtered_falls_back_to_the_unfiltered_pair(tiny_guard_dir: Any) -> None:
    guard = load_guard(GuardConfig(path=str(tiny_guard_dir)))
    with torch.no_grad():  # verdict logits 0: far below the top 50 of a random vocabulary
        guard.model.get_output_embeddings().weight[[guard.safe_id, guard.unsafe_id]] = 0.0
    conv = Conversation.from_pair(PROMPT, "a b c d e f")
    got = StarEngine(guard).score([ScoreRequest(conv, CutSpec(CutKind.WORDS, 3), convention=PUBLISHED)])[0]
    # Both logits are 0 before the filters, so the fallback two-way softmax is exactly one half
    # (the released code would have produced NaN here).
    assert [s.p_safe for s in got.segments] == [0.5, 0.5]
    assert math.isnan(reference(guard, "a b c")[0])


def test_published_requests_are_validated_and_survive_the_wire() -> None:
    conv = Conversation.from_pair("q", "a b")
    req = ScoreRequest(conv, CutSpec(CutKind.WORDS, 5), convention=PUBLISHED)
    back, _ = score_request_from_pb(score_request_to_pb(req))
    assert back == req
    assert score_request_from_pb(score_request_to_pb(ScoreRequest(conv)))[0].convention is Convention.RAW


PAIR = Conversation.from_pair("q", "a b")


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (ScoreRequest(PAIR, CutSpec(CutKind.GUARD_TOKENS, 2), 1.0, PUBLISHED), "between words"),
        (ScoreRequest(PAIR, CutSpec(), 0.5, PUBLISHED), "temperature"),
    ],
)
def test_published_refuses_what_it_cannot_mean(
    tiny_guard_dir: Any, request_: ScoreRequest, message: str
) -> None:
    engine = StarEngine(load_guard(GuardConfig(path=str(tiny_guard_dir))))
    with pytest.raises(InvalidRequest, match=message):
        engine.score([request_])
