"""The shared-head cache: the template head's keys and values computed once per guard, exactly.

Run on the real Llama Guard 3 (8B) chat template with the real Llama 3 tokenizer, where the head is
the task line and the 14-category policy before the conversation, and on the tiny test guard.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from scorer_server.engine.caches import HeadCache, template_head_ids
from scorer_server.engine.engine import EngineConfig, StarEngine
from scorer_server.guards.loader import GuardConfig, load_guard
from star_contract.types import Conversation, CutKind, CutSpec, ScoreRequest, StarScores
from star_testing.real_guards import save_named_real_guard

RESPONSE = "Sure. First mix the flour and water, then knead it for ten minutes and bake at 220 C."
# First user characters chosen to meet the head's last token ("User:") under BPE: ":" and " " can merge
# with it or change the pre-tokenisation, so those trunks share fewer tokens with the cached head.
OPENINGS = ["How do I bake bread?", ": what now?", "  spaced out", "\n\nnewlines first", "🙂 emoji"]


@pytest.fixture(scope="module")
def llama_guard_3(tmp_path_factory: pytest.TempPathFactory, guard_templates: Path) -> Any:
    path, real = save_named_real_guard(
        tmp_path_factory.mktemp("lg3") / "guard", "llama-guard-3-8b", guard_templates
    )
    return load_guard(GuardConfig(path=str(path), preset=real.preset))


def requests() -> list[ScoreRequest]:
    out = [ScoreRequest(Conversation.from_pair(q, RESPONSE), CutSpec(CutKind.WORDS, 3)) for q in OPENINGS]
    multi = Conversation.from_dicts(
        [
            {"role": "user", "content": "Hi!"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": OPENINGS[0]},
            {"role": "assistant", "content": RESPONSE},
        ]
    )
    out.append(ScoreRequest(multi, CutSpec(CutKind.GUARD_TOKENS, 4)))
    out.append(ScoreRequest(Conversation.from_pair(OPENINGS[0], ""), CutSpec(CutKind.WORDS, 1)))
    return out


def max_diff(a: list[StarScores], b: list[StarScores]) -> float:
    return max(
        abs(x.p_safe - y.p_safe)
        for ra, rb in zip(a, b, strict=True)
        for x, y in zip(ra.segments, rb.segments, strict=True)
    )


def test_head_of_real_llama_guard_3_is_its_policy(llama_guard_3: Any) -> None:
    ids = template_head_ids(llama_guard_3)
    text = llama_guard_3.tokenizer.decode(ids)
    assert len(ids) > 120  # task line and 14 categories: 146 tokens with the real tokenizer
    assert "<END UNSAFE CONTENT CATEGORIES>" in text and text.rstrip().endswith("User:")
    assert "bake" not in text
    for req in requests():
        trunk = llama_guard_3.encode([llama_guard_3.template.render(req.conversation)])[0]
        assert trunk[: len(ids) - 1] == ids[:-1]  # at most the boundary token can differ


def test_head_cache_is_exact_on_real_llama_guard_3(llama_guard_3: Any) -> None:
    cached = StarEngine(llama_guard_3)
    plain = StarEngine(llama_guard_3, EngineConfig(head_cache=False))
    assert cached.head is not None and plain.head is None
    reqs = requests()
    per_cut = cached.score(reqs, method="per_cut")
    assert max_diff(cached.score(reqs), per_cut) <= 1e-5
    assert max_diff(plain.score(reqs), per_cut) <= 1e-5
    assert cached.head.reused > 0
    # One request at a time: each batch starts from as much of the head as its trunk matches.
    for req, want in zip(reqs, per_cut, strict=True):
        assert max_diff(cached.score([req]), [want]) <= 1e-5


def test_usable_prefix_stops_at_first_mismatch_and_keeps_a_verdict_position(tiny_guard_dir: Path) -> None:
    guard = load_guard(GuardConfig(path=str(tiny_guard_dir)))
    head = HeadCache(guard, ids=[5, 6, 7, 8, 9])
    assert head.tokens == 5 and head.nbytes > 0
    assert head.usable([[5, 6, 7, 8, 9, 10], [5, 6, 7, 8, 9, 11]], min_shared=50) == 5
    assert head.usable([[5, 6, 7, 8, 9, 10], [5, 6, 4]], min_shared=50) == 2
    assert head.usable([[5, 6, 7, 8, 9, 10]], min_shared=4) == 3  # the cut read at position 3 is computed
    assert head.usable([[1, 2, 3]], min_shared=50) == 0


def test_a_disabled_cache_holds_no_head(tiny_guard_dir: Path) -> None:
    guard = load_guard(GuardConfig(path=str(tiny_guard_dir)))
    assert StarEngine(guard, EngineConfig(head_cache=False)).head is None
    head = StarEngine(guard).head
    assert head is not None and head.tokens == len(template_head_ids(guard)) > 0
