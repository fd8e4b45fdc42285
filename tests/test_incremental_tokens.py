"""Incremental tokenisation equals whole tokenisation, on the real Llama 3 tokenizer and the test ones.

The strings grow the way live moderation's prompts do: a fixed head, a response that gains a few
characters (or a whole word, or a long run) at a time, and the template's suffix after it. The
alphabet holds what breaks naive "re-tokenise the last few characters" schemes: runs of letters, digits
and spaces longer than the margin, newlines after spaces, contractions, multi-byte characters that
byte-level BPE splits into several tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scorer_server.engine.incremental_tokens import IncrementalTokenizer, splits_into_pieces
from star_testing.real_guards import llama3_tokenizer
from star_testing.tiny_guard import TinyGuardSpec, build_tokenizer

PIECES = ["a", "b", "ab", "Hello", " world", " ", "  ", "\n", "\n\n", " \n", "\t", "1", "12345", "é", "ü"]
PIECES += ["😀", "🙂🙂", "'s", "'t", "!", "...", "x" * 45, " " * 40, "9" * 20, "Voilà", "—", "°C", "<|eot"]
HEAD = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nTask: judge.\n\nUser: hi\n\nAgent:"
SUFFIX = "\n\n<END CONVERSATION>\n\nProvide your safety assessment.<|eot_id|>"


@pytest.fixture(scope="module")
def llama3(guard_templates: Path) -> Any:
    return llama3_tokenizer(guard_templates / "llama3.tokenizer.model")


@pytest.fixture(scope="module", params=["bytelevel", "metaspace"])
def tiny(request: pytest.FixtureRequest) -> Any:
    return build_tokenizer(TinyGuardSpec(tokenizer=request.param))


def whole(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def grow(tokenizer: Any, pieces: list[str], cut_every: int) -> IncrementalTokenizer:
    """Tokenise the prompts of a growing response (every `cut_every` pieces a cut's prompt, every piece
    the whole response's), each against whole tokenisation."""
    inc = IncrementalTokenizer(tokenizer)
    text = ""
    for i, piece in enumerate(pieces):
        text += piece
        for s in [HEAD + " " + text + SUFFIX] + ([HEAD + " " + text] if i % cut_every == 0 else []):
            assert inc.encode(s).ids == whole(tokenizer, s), repr(s[-80:])
    return inc


SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@SETTINGS
@given(pieces=st.lists(st.sampled_from(PIECES), min_size=1, max_size=40), cut_every=st.integers(1, 4))
def test_real_llama3_tokenizer(llama3: Any, pieces: list[str], cut_every: int) -> None:
    grow(llama3, pieces, cut_every)


@SETTINGS
@given(pieces=st.lists(st.sampled_from(PIECES), min_size=1, max_size=40), cut_every=st.integers(1, 4))
def test_test_tokenizers(tiny: Any, pieces: list[str], cut_every: int) -> None:
    grow(tiny, pieces, cut_every)


def test_a_long_response_is_tokenised_from_anchors(llama3: Any) -> None:
    words = ["Sure", ",", " first", " mix", " 200g", " flour", "\n\n", " then", " bake", " it", "."]
    inc = grow(llama3, words * 40, 1)
    # every string after the first shares far more than the margin with the one before
    assert inc.whole == 1 and inc.fallbacks == 0
    text, whole_chars = "", 0
    for w in words * 40:
        text += w
        whole_chars += 2 * len(HEAD + " " + text) + len(SUFFIX)
    # measured: 80 characters a string (margin, overlap, new text, suffix) against ~1,000 for whole
    assert inc.chars * 10 < whole_chars


def test_a_run_across_the_anchor_falls_back_to_whole(llama3: Any) -> None:
    """A letter run that grows past the margin changes the tokens before the anchor: the overlap check
    sees it and the string is tokenised whole (still exact)."""
    inc = IncrementalTokenizer(llama3)
    base = HEAD + " ok " + "q" * 60
    inc.encode(base + SUFFIX)
    out = inc.encode(base + "q" * 5 + SUFFIX)
    assert out.ids == whole(llama3, base + "q" * 5 + SUFFIX)


def test_bpe_over_the_whole_text_is_never_incremental() -> None:
    crossing = build_tokenizer(TinyGuardSpec(tokenizer="bytelevel-crossing"))
    assert not splits_into_pieces(crossing)
    inc = IncrementalTokenizer(crossing)
    for n in range(1, 30):
        s = HEAD + " mix the flour" * n + SUFFIX
        assert inc.encode(s).ids == whole(crossing, s)
    assert inc.partial == 0 and inc.whole == 29
