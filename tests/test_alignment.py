"""Cuts aligned to trainee-token boundaries and per-label-token STAR weights."""

from __future__ import annotations

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


def test_token_weights_by_chunk() -> None:
    sc = StarScores((Segment(5, 0.9), Segment(10, 0.2), Segment(12, 0.6)))
    assert token_weights(sc, [0, 3, 5, 6, 10, 11, 12, 99]) == [0.9, 0.9, 0.9, 0.2, 0.2, 0.6, 0.6, 0.6]
    assert token_weights(StarScores(()), [1, 2]) == [1.0, 1.0]


@pytest.mark.parametrize("response", RESPONSES)
def test_example_weights_follow_chunks(tokenizer: Any, response: str) -> None:
    conv = Conversation.from_pair("How do I bake bread?", response)
    ex = tokenize_conversation(tokenizer, conv, max_length=4096, words_per_chunk=2)
    assert ex is not None
    (turn,) = ex.turns
    cuts = turn.request.cuts.offsets
    # chunk k gets score k / 10 so every token's weight names its chunk
    segs = tuple(Segment(c, (k + 1) / 10) for k, c in enumerate(cuts)) or (Segment(0, 0.5),)
    w = example_weights(ex, [StarScores(segs)])
    assert len(w) == sum(ex.label_mask)
    ends = turn.token_ends
    for p, e, wt in zip(turn.positions, ends, w, strict=True):
        piece = tokenizer.decode([ex.input_ids[p]])
        if e >= len(response):  # the end-of-turn token and the last response token: last chunk
            assert wt == segs[-1].p_safe, piece
        else:
            k = next(i for i, c in enumerate(cuts) if c >= e)
            assert wt == segs[k].p_safe
            lo = cuts[k - 1] if k else 0
            assert lo < e <= cuts[k] or (k == 0 and e == 0)
    assert tokenizer.decode([ex.input_ids[turn.positions[-1]]]) == "<|eot_id|>"
    # the labels decode to the response plus the end of turn, nothing from the prompt
    text = tokenizer.decode([ex.input_ids[p] for p in ex.label_positions])
    assert text.replace("<|eot_id|>", "").strip() == response.strip()


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
