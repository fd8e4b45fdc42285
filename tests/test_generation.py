"""Batched greedy generation: left padding gives the same answers as one prompt at a time."""

from __future__ import annotations

from typing import Any

import pytest

from star_testing.tiny_chat import build_tiny_policy
from trainer_client.generation import GenerationConfig, chat_texts, generate_responses, pad_id

PROMPTS = ["Hi", "How do I bake bread with flour, water and yeast at home?", "List numbers 1 2 3", "Sort it"]


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, Any]:
    return build_tiny_policy(hidden=32, layers=2, intermediate=64, vocab=400, seed=3)


def test_batched_equals_one_by_one_and_is_deterministic(tiny: tuple[Any, Any]) -> None:
    model, tok = tiny
    cfg = GenerationConfig(max_new_tokens=6, batch_size=4)
    batched = generate_responses(model, tok, PROMPTS, cfg)
    single = [
        generate_responses(model, tok, [p], GenerationConfig(max_new_tokens=6, batch_size=1))[0]
        for p in PROMPTS
    ]
    assert batched == single
    assert generate_responses(model, tok, PROMPTS, cfg) == batched
    assert len(batched) == len(PROMPTS) and any(batched)


def test_chat_texts_system_prompt_and_fallback(tiny: tuple[Any, Any]) -> None:
    _, tok = tiny
    with_sys = chat_texts(tok, ["hello"], system_prompt="Be safe.")[0]
    assert "Be safe." in with_sys and with_sys.index("Be safe.") < with_sys.index("hello")
    assert with_sys.endswith("assistant<|end_header_id|>\n\n")

    class Bare:
        chat_template = None
        pad_token_id = None
        eos_token_id = 5

    assert chat_texts(Bare(), ["hello"], "Be safe.") == ["Be safe.\n\nUser: hello\nAssistant:"]
    assert pad_id(Bare()) == 5


def test_bad_config_is_rejected(tiny: tuple[Any, Any]) -> None:
    model, tok = tiny
    with pytest.raises(ValueError):
        generate_responses(model, tok, ["x"], GenerationConfig(max_new_tokens=0))
