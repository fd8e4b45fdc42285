"""Conformance over the real chat templates of published guards, served through the public gRPC API.

For each template in ../shared/guard-templates (Llama Guard 3 1B and 8B, Granite Guardian 3.0 and 3.2,
ShieldGemma) a guard directory is built with random tiny weights of the family's architecture (and the
real Llama 3 tokenizer for Llama Guard). A real `star-scorer serve` subprocess scores it, and every cut
must equal the plain definition computed here independently of the scorer's code: one forward of the
model on `apply_chat_template` of the conversation cut at that offset (content in the form the
template reads, stated per guard below, plus the text the guard writes before its verdict), reading
the logits of the published verdict tokens.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from star_client import InvalidRequest, ScorerClient
from star_contract.content import ContentForm, shape_messages
from star_contract.types import Conversation, CutKind, CutSpec, ScoreRequest, StarScores
from star_testing.real_guards import (
    REAL_GUARDS,
    RealGuard,
    llama3_tokenizer,
    save_real_guard,
)

# Skipped without ../shared/guard-templates, failed without it in CI (conftest's guard_templates).
pytestmark = pytest.mark.usefixtures("guard_templates")

PROMPT = "How do I bake bread at home?"
RESPONSES = {
    "plain": "Mix flour, water and yeast, knead for ten minutes, then bake it at 220 C.",
    "padded": "  Sure!\tHere it is:\n1. mix\n\n2. bake  \n",
    "unicode": "Voilà — señor Müller's 日本語 recipe: 🙂 knead, rest, bake.",
    "empty": "",
}


def conversations(guard: RealGuard) -> dict[str, Conversation]:
    out = {name: Conversation.from_pair(PROMPT, text) for name, text in RESPONSES.items()}
    out["multi_turn"] = Conversation.from_dicts(
        [
            {"role": "user", "content": "Hi!"},
            {"role": "assistant", "content": "Hello. How can I help?"},
            {"role": "user", "content": PROMPT},
            {"role": "assistant", "content": RESPONSES["plain"]},
        ]
    )
    if guard.accepts_system:
        # Granite Guardian 3.2 reads a system message as the risk name; the others ignore it here.
        system = "violence" if guard.name.startswith("granite-guardian-3.2") else "Be helpful."
        out["system"] = Conversation.from_dicts(
            [
                {"role": "system", "content": system},
                *Conversation.from_pair(PROMPT, RESPONSES["plain"]).to_dicts(),
            ]
        )
    return out


def cut_specs(response: str) -> list[CutSpec]:
    specs = [CutSpec(CutKind.WORDS, 1), CutSpec(CutKind.WORDS, 5), CutSpec(CutKind.GUARD_TOKENS, 2)]
    if response:
        # mid-word, after whitespace, inside a multi-byte run, and the end
        n = len(response)
        offsets = sorted({max(1, n // 7), n // 3 + 1, n // 2, (2 * n) // 3, n - 1, n} - {0})
        specs.append(CutSpec(CutKind.OFFSETS, offsets=tuple(o for o in offsets if 0 < o <= n)))
    return specs


@pytest.fixture(scope="module")
def llama_tokenizer(guard_templates: Path) -> Any:
    return llama3_tokenizer(guard_templates / "llama3.tokenizer.model")


class Reference:
    """The per-cut definition, computed with transformers alone."""

    def __init__(self, path: Path, guard: RealGuard, kwargs: dict[str, Any]) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.guard = guard
        self.tok = AutoTokenizer.from_pretrained(str(path))
        attn = "eager" if guard.family == "gemma" else "sdpa"
        self.model = AutoModelForCausalLM.from_pretrained(str(path), attn_implementation=attn).eval()
        self.kwargs = kwargs

    def prompt(self, conv: Conversation, cut: int) -> str:
        msgs = conv.to_dicts()
        msgs[-1]["content"] = conv.response[:cut]
        form = ContentForm(self.guard.content_form)
        text = self.tok.apply_chat_template(
            shape_messages(msgs, form), tokenize=False, add_generation_prompt=True, **self.kwargs
        )
        return str(text) + self.guard.verdict_prefix

    @torch.inference_mode()
    def p_safe(self, conv: Conversation, cut: int, safe_id: int, unsafe_id: int) -> float:
        ids = self.tok(self.prompt(conv, cut), add_special_tokens=False, return_tensors="pt")["input_ids"]
        logits = self.model(input_ids=ids, logits_to_keep=1).logits[0, -1]
        diff = float(logits[safe_id] - logits[unsafe_id])
        return 1.0 / (1.0 + math.exp(-diff))


Served = tuple[RealGuard, Any, "Reference"]


@pytest.fixture(scope="module", params=REAL_GUARDS, ids=[g.name for g in REAL_GUARDS])
def served(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    llama_tokenizer: Any,
    start_server: Any,
    guard_templates: Path,
) -> Iterator[Served]:
    """A real server on one real template (the later --guard/--preset replace the fixture's own)."""
    from scorer_server.guards.presets import get_preset

    guard: RealGuard = request.param
    folder = tmp_path_factory.mktemp(guard.name) / guard.name
    path = save_real_guard(folder, guard, guard_templates, llama_tokenizer)
    server = start_server("--guard", str(path), "--preset", guard.preset, "--no-warmup")
    try:
        yield guard, server, Reference(path, guard, get_preset(guard.preset).template_kwargs)
    finally:
        assert server.stop(30) == 0


def test_every_cut_equals_the_plain_per_cut_forward(served: Served) -> None:
    guard, server, ref = served
    convs = conversations(guard)
    reqs = [(name, ScoreRequest(c, spec)) for name, c in convs.items() for spec in cut_specs(c.response)]
    with ScorerClient(server.address) as client:
        info = client.info()
        results: list[StarScores] = client.score_many([r for _, r in reqs])
    if guard.family == "llama":  # the published Llama Guard 3 verdict ids of the real tokenizer
        assert (info.safe_token_id, info.unsafe_token_id) == (19193, 39257)
    else:
        first = ref.tok(guard.verdict_prefix + info.safe_word, add_special_tokens=False)["input_ids"]
        assert info.safe_token_id in first
    checked = 0
    for (name, req), scores in zip(reqs, results, strict=True):
        ends = [s.end for s in scores.segments]
        assert ends[-1] == len(req.conversation.response), name
        for seg in scores.segments:
            want = ref.p_safe(req.conversation, seg.end, info.safe_token_id, info.unsafe_token_id)
            assert seg.p_safe == pytest.approx(want, abs=1e-5), (name, req.cuts, seg.end)
            checked += 1
    assert checked > 100


def test_judge_equals_the_full_response_forward(served: Served) -> None:
    guard, server, ref = served
    convs = list(conversations(guard).values())
    with ScorerClient(server.address) as client:
        info = client.info()
        verdicts = client.judge(convs)
    for conv, verdict in zip(convs, verdicts, strict=True):
        want = 1.0 - ref.p_safe(conv, len(conv.response), info.safe_token_id, info.unsafe_token_id)
        assert verdict.p_unsafe == pytest.approx(want, abs=1e-5)


REFUSALS = {
    "llama": ("Be helpful.", "Conversation roles must alternate"),
    "granite-guardian-3.2-5b": ("be nice", "unknown system risk"),
}


def test_a_conversation_the_template_refuses_is_invalid_argument(served: Served) -> None:
    guard, server, _ = served
    refusal = REFUSALS.get(guard.family) or REFUSALS.get(guard.name)
    if refusal is None:
        pytest.skip(f"{guard.name}'s template renders every conversation the API accepts")
    system, message = refusal
    pair = Conversation.from_pair("q", "a").to_dicts()
    conv = Conversation.from_dicts([{"role": "system", "content": system}, *pair])
    with ScorerClient(server.address) as client:
        with pytest.raises(InvalidRequest, match=message):
            client.score(ScoreRequest(conv))
        with pytest.raises(InvalidRequest, match=message):
            client.judge([conv])
        assert client.score(ScoreRequest(Conversation.from_pair("q", "a"))).segments  # still serving
