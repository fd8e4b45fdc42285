"""Loading conversations, tokenising with the chat template, collating."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from star_contract.types import Conversation
from star_testing.tiny_chat import save_tiny_trainee
from trainer_client.data import build_examples, collate, load_conversations


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: Any) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(save_tiny_trainee(tmp_path_factory.mktemp("t"))))


def test_jsonl_messages_and_pairs(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    recs = [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]},
        {"prompt": "How?", "response": "Like this."},
    ]
    p.write_text("\n".join(json.dumps(r) for r in recs) + "\n\n")
    convs = load_conversations(str(p))
    assert convs == [Conversation.from_pair("Hi", "Hello."), Conversation.from_pair("How?", "Like this.")]
    assert len(load_conversations(str(p), limit=1)) == 1


def test_saved_dataset_dir(tmp_path: Path) -> None:
    import datasets

    ds = datasets.Dataset.from_list([{"prompt": "a", "response": "b c"}, {"prompt": "d", "response": "e"}])
    ds.save_to_disk(str(tmp_path / "ds"))
    assert [c.response for c in load_conversations(str(tmp_path / "ds"))] == ["b c", "e"]


@pytest.mark.parametrize(
    ("content", "message"),
    [('{"text": "x"}', "needs 'messages'"), ("{not json", "not valid JSON"), ('{"messages": 3}', "list of")],
)
def test_bad_records_are_clear_errors(tmp_path: Path, content: str, message: str) -> None:
    p = tmp_path / "bad.jsonl"
    p.write_text(content + "\n")
    with pytest.raises(ValueError, match=message):
        load_conversations(str(p))
    with pytest.raises(ValueError, match="does not exist"):
        load_conversations(str(tmp_path / "missing.jsonl"))


def test_labels_only_on_assistant_tokens_and_collate(tokenizer: Any) -> None:
    convs = [
        Conversation.from_pair("How do I bake bread?", "Mix flour, water and yeast."),
        Conversation.from_pair("Hi", "Hello there, friend; how are you doing today?"),
    ]
    exs = build_examples(tokenizer, convs, max_length=512)
    assert [e.index for e in exs] == [0, 1]
    for e, c in zip(exs, convs, strict=True):
        labelled = tokenizer.decode([e.input_ids[p] for p in e.label_positions])
        assert labelled == c.response + "<|eot_id|>"
        prompt_part = tokenizer.decode([t for t, m in zip(e.input_ids, e.label_mask, strict=True) if not m])
        assert c.messages[0].content in prompt_part and c.response not in prompt_part
    w = [[0.5] * sum(e.label_mask) for e in exs]
    b = collate(
        exs, pad_id=0, weights=w, keep=[1.0, 0.0], ref_logprobs=[[-1.0] * sum(e.label_mask) for e in exs]
    )
    n0 = len(exs[0].input_ids)
    assert b.input_ids.shape[0] == 2
    assert int(b.attention_mask[0].sum()) == n0 and int(b.label_mask[0, n0:].sum()) == 0
    assert float(b.weights[b.label_mask.bool()].unique()) == 0.5
    assert float(b.weights[~b.label_mask.bool()].unique()) == 1.0
    assert b.ref_logprobs is not None and float(b.ref_logprobs[b.label_mask.bool()].unique()) == -1.0
    assert b.keep.tolist() == [1.0, 0.0]
