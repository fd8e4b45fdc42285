"""Cuts aligned to trainee-token boundaries and per-label-token STAR weights."""

from __future__ import annotations

from itertools import groupby
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from star_contract.types import Conversation, Segment, StarScores
from star_testing.tiny_chat import save_tiny_trainee
from trainer_client.alignment import aligned_cuts, token_weights
from trainer_client.data import example_weights, tokenize_conversation

RESPONSES = [
    "Sure, here is how to do it step by step. First, take the flour; then, carefully, mix the rest.",
    "I cannot help with that request.  As an AI, I'm sorry,\nbut that would be harmful to others.",
    "one two three four five six seven eight nine ten",
    "word",
    "",
]


@pytest.fixture(scope="module", params=["bytelevel-crossing", "bytelevel", "metaspace"])
def tokenizer(request: Any, tmp_path_factory: Any) -> Any:
    from transformers import AutoTokenizer

    path: Path = save_tiny_trainee(tmp_path_factory.mktemp(request.param), tokenizer=request.param)
    return AutoTokenizer.from_pretrained(str(path))


def test_cuts_every_five_words() -> None:
    r = "a b c d e f g h i j k l"
    ends = [i + 1 for i in range(len(r))]  # character-level tokens: every offset is a boundary
    assert aligned_cuts(r, ends, 5) == (9, 19, len(r))


def test_cut_moves_to_the_end_of_a_straddling_token() -> None:
    r = "aa bb cc"
    # tokens "aa", " b", "b c", "c": word "bb" ends at 5 inside token "b c" (ends 7)
    assert aligned_cuts(r, [2, 4, 7, 8], 2) == (7, 8)


def _reference_cuts(response: str, token_ends: list[int], m: int) -> tuple[int, ...]:
    """aligned_cuts by a plain character scan and a linear search (no regex, no bisect)."""
    n = len(response)
    if n == 0:
        return ()
    word_ends = [i + 1 for i, ch in enumerate(response)
                 if not ch.isspace() and (i + 1 == n or response[i + 1].isspace())]  # fmt: skip
    cuts: list[int] = []
    for j in range(m - 1, len(word_ends), m):  # the end of every m-th word
        cut = min((t for t in token_ends if word_ends[j] <= t < n), default=n)
        if cut not in cuts:
            cuts.append(cut)
    if not cuts or cuts[-1] != n:
        cuts.append(n)
    return tuple(cuts)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.sampled_from(["ab", "c", " ", "  ", "de f", "\n", "gh."]), min_size=1, max_size=30),
    st.integers(1, 4),
)
def test_cuts_fall_on_token_boundaries(pieces: list[str], m: int) -> None:
    r = "".join(pieces)
    ends, pos = [], 0
    for p in pieces:
        pos += len(p)
        ends.append(pos)
    cuts = aligned_cuts(r, ends, m)
    assert list(cuts) == sorted(set(cuts)) and cuts[-1] == len(r)
    assert set(cuts) <= set(ends)
    assert cuts == _reference_cuts(r, ends, m)


def test_reference_cuts_by_hand() -> None:
    """The reference itself, on the hand-worked examples above."""
    assert _reference_cuts("a b c d e f g h i j k l", list(range(1, 24)), 5) == (9, 19, 23)
    assert _reference_cuts("aa bb cc", [2, 4, 7, 8], 2) == (7, 8)


def test_token_weights_by_chunk() -> None:
    sc = StarScores((Segment(5, 0.9), Segment(10, 0.2), Segment(12, 0.6)))
    assert token_weights(sc, [0, 3, 5, 6, 10, 11, 12, 99]) == [0.9, 0.9, 0.9, 0.2, 0.2, 0.6, 0.6, 0.6]
    assert token_weights(StarScores(()), [1, 2]) == [1.0, 1.0]


@pytest.mark.parametrize("response", RESPONSES)
def test_example_weights_follow_chunks(tokenizer: Any, response: str) -> None:
    """The tokens weighted with chunk k's score decode to exactly chunk k's text (checked by the
    tokenizer's own decode, not by the token offsets the weights were computed from)."""
    conv = Conversation.from_pair("How do I bake bread?", response)
    ex = tokenize_conversation(tokenizer, conv, max_length=4096, words_per_chunk=2)
    assert ex is not None
    (turn,) = ex.turns
    cuts = turn.request.cuts.offsets
    # chunk k gets score (k + 1) / 10 so every token's weight names its chunk
    segs = tuple(Segment(c, (k + 1) / 10) for k, c in enumerate(cuts)) or (Segment(0, 0.5),)
    w = example_weights(ex, [StarScores(segs)])
    assert len(w) == sum(ex.label_mask)
    label_ids = [ex.input_ids[p] for p in ex.label_positions]
    # the weights run through the chunks in order, each chunk holding at least one token
    assert [k for k, _ in groupby(w)] == [s.p_safe for s in segs]
    for k, cut in enumerate(cuts[:-1]):
        upto = sum(1 for x in w if x <= segs[k].p_safe)  # the tokens of chunks 0..k
        assert tokenizer.decode(label_ids[:upto]) == response[:cut], (k, cut)
    # the last chunk takes the end-of-turn token; the labels are the response and nothing else
    assert tokenizer.decode(label_ids) == response + "<|eot_id|>"
    assert tokenizer.decode(label_ids[-1:]) == "<|eot_id|>"
    assert w[-1] == segs[-1].p_safe


def test_truncation_keeps_alignment(tokenizer: Any) -> None:
    conv = Conversation.from_pair("Hi", RESPONSES[0])
    full = tokenize_conversation(tokenizer, conv, max_length=4096)
    short = tokenize_conversation(tokenizer, conv, max_length=20)
    assert full is not None and short is not None
    assert len(short.input_ids) == 20
    assert short.turns[0].request == full.turns[0].request  # the guard still sees the full response
    n = len(short.turns[0].positions)
    assert short.turns[0].token_ends == full.turns[0].token_ends[:n]
    assert tokenize_conversation(tokenizer, conv, max_length=5) is None


def test_all_assistant_turns(tokenizer: Any) -> None:
    conv = Conversation.from_dicts(
        [
            {"role": "system", "content": "Be nice."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello there friend."},
            {"role": "user", "content": "How do I bake bread?"},
            {"role": "assistant", "content": "Mix flour, water and yeast."},
        ]
    )
    last = tokenize_conversation(tokenizer, conv)
    both = tokenize_conversation(tokenizer, conv, all_turns=True)
    assert last is not None and both is not None
    assert len(last.turns) == 1 and len(both.turns) == 2
    assert sum(both.label_mask) > sum(last.label_mask)
    first_req = both.turns[0].request.conversation
    assert first_req.response == "Hello there friend."
    assert all(m.role != "system" for m in first_req.messages)
