"""The shared-head cache: the template head's keys and values computed once per guard, exactly.

Run on the real Llama Guard 3 (8B) chat template with the real Llama 3 tokenizer, where the head is
the task line and the 14-category policy before the conversation; on the same template with a tokenizer
whose merges cross the head's boundary; and on the tiny test guard.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from scorer_server.engine.caches import HeadCache, template_head_ids
from scorer_server.engine.engine import EngineConfig, StarEngine
from scorer_server.guards.guard_config import GuardConfig
from scorer_server.guards.loader import load_guard
from star_contract.types import Conversation, CutKind, CutSpec, ScoreRequest, StarScores
from star_testing.real_guards import REAL_GUARDS, save_named_real_guard
from star_testing.tiny_guard import TinyGuardSpec, build_model, build_tokenizer

RESPONSE = "Sure. First mix the flour and water, then knead it for ten minutes and bake at 220 C."
# First user characters aimed at the head's last token (":" of "User:"): blanks and newlines, punctuation
# that could join the ":", a contraction, an emoji, a zero-width space, a no-break space, an accent with
# nothing to sit on. None moves it under the real Llama 3 tokenizer, and why is in the docstring of
# test_head_of_real_llama_guard_3_is_its_policy.
OPENINGS = [
    "How do I bake bread?",
    ": what now?",
    ":) hi",
    "  spaced out",
    "\n\nnewlines first",
    "'s it hard?",
    "🙂 emoji",
    "\u200bzero width",
    "\xa0no-break space",
    "\u0301accent",
]
# First user characters that merge with the head's last token, ": ", under a byte-level BPE trained
# without pre-tokenisation (found by tokenising rendered prompts against the head's ids).
MERGING_OPENINGS = ["Sure, how do I bake bread?", "In what oven?", "Should I knead it?", "Chewy bread?"]


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
    """The head is the policy up to "User:", and no opening moves its boundary: the template strips the
    message and writes "User: " before it, and the Llama 3 pre-tokenizer makes that ":" a piece of its
    own whatever follows the space (BPE merges never cross pieces). So on Llama Guard 3 every request
    reuses the whole head. A sweep of 4,859 openings (every character up to U+024F and some beyond,
    alone and in short combinations, on the 1B and 8B templates) found no exception."""
    ids = template_head_ids(llama_guard_3)
    text = llama_guard_3.tokenizer.decode(ids)
    assert len(ids) > 120  # task line and 14 categories: 146 tokens with the real tokenizer
    assert "<END UNSAFE CONTENT CATEGORIES>" in text and text.rstrip().endswith("User:")
    assert "bake" not in text
    head = HeadCache(llama_guard_3)
    for req in requests():
        trunk = llama_guard_3.encode([llama_guard_3.template.render(req.conversation)])[0]
        assert trunk[: len(ids)] == ids
        assert head.usable([trunk], len(trunk)) == len(head.ids) == len(ids)


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


@pytest.fixture(scope="module")
def llama_guard_3_crossing(tmp_path_factory: pytest.TempPathFactory, guard_templates: Path) -> Any:
    """The real Llama Guard 3 (8B) template over a small byte-level BPE trained without pre-tokenisation,
    so its merges cross spaces and punctuation (the Llama 3 tokenizer's never do; a tokenizer without a
    splitting pre-tokenizer's can), and tiny weights."""
    real = next(g for g in REAL_GUARDS if g.name == "llama-guard-3-8b")
    spec = TinyGuardSpec(family="llama", tokenizer="bytelevel-crossing")
    template = (guard_templates / real.template_file).read_text(encoding="utf-8")
    tok = build_tokenizer(spec, corpus=[template])
    tok.chat_template = template
    path = tmp_path_factory.mktemp("lg3-crossing") / "guard"
    build_model(spec, len(tok)).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return load_guard(GuardConfig(path=str(path), preset=real.preset))


def test_a_first_message_that_merges_with_the_head_reuses_less_of_it_and_scores_stay_exact(
    llama_guard_3_crossing: Any,
) -> None:
    """Where a conversation's first characters merge with the head's last token (here ": " + "S" gives
    ": S" on the real Llama Guard 3 template), its trunk does not begin with the whole head, and
    `HeadCache.usable` gives its batch only the prefix the trunk really shares: the keys and values of
    ": " are never used in place of those of ": S". Scores with the head cache equal scores without it,
    for those openings batched with an ordinary one and alone. Without the token-by-token check in
    `usable` (all of the head, up to the verdict-position bound), these scores differ."""
    guard = llama_guard_3_crossing
    head = HeadCache(guard)
    reqs = [
        ScoreRequest(Conversation.from_pair(q, RESPONSE), CutSpec(CutKind.WORDS, 3))
        for q in [*MERGING_OPENINGS, OPENINGS[0]]
    ]
    cached = StarEngine(guard, EngineConfig(head_cache=True))
    plain = StarEngine(guard, EngineConfig(head_cache=False))
    want = plain.score(reqs)
    assert max_diff(cached.score(reqs), want) <= 1e-5  # (0.39 without the check)
    for req, w in zip(reqs, want, strict=True):
        assert max_diff(cached.score([req]), [w]) <= 1e-5  # (0.036 - 0.39 for the merging openings)
    trunks = guard.encode([guard.template.render(r.conversation) for r in reqs])
    for trunk in trunks[:-1]:
        assert trunk[: len(head.ids)] != head.ids
        assert 0 < head.usable([trunk], len(trunk)) < len(head.ids)  # 168 of 169 head tokens
    assert head.usable(trunks[-1:], len(trunks[-1])) == len(head.ids)


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
