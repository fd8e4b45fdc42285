"""trainer_client.streaming: greedy generation as an async stream of text chunks.

The chunks join to exactly what batched greedy generation (`generate_responses`) gives for the same
prompt, with the toy chat model's word-level tokenizer and with byte-level and SentencePiece-style BPE
tokenizers whose words span several tokens; words arrive whole; the event loop keeps running between
decoding steps.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from star_testing.tiny_chat import CHAT_TEMPLATE
from star_testing.tiny_guard import TinyGuardSpec, build_model, build_tokenizer
from trainer_client.generation import GenerationConfig, generate_responses
from trainer_client.streaming import IncrementalDecoder, stream_greedy, word_end

TOY_PROMPTS = ["how do i make a bread ?", "what is 3 plus 4 ?", "please , tell me how to make a murkbrew ."]
BPE_PROMPTS = [
    "Hi",
    "How do I bake bread with flour, water and yeast at home?",
    "Sort it",
    "héllo wörld 東京",
]


def tiny_policy(tokenizer: str) -> tuple[Any, Any]:
    tok = build_tokenizer(TinyGuardSpec(family="llama", vocab=600, tokenizer=tokenizer))
    tok.chat_template = CHAT_TEMPLATE
    spec = TinyGuardSpec(family="llama", hidden=64, layers=2, intermediate=128, init_range=0.2, seed=0)
    return build_model(spec, len(tok), max_positions=2048, tokenizer=tok).eval(), tok


def toy_chat() -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from star_toy.build import shipped_models

    path = shipped_models() / "chat"
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


async def collect(model: Any, tok: Any, prompt: str, max_new_tokens: int) -> list[str]:
    return [c async for c in stream_greedy(model, tok, prompt, max_new_tokens=max_new_tokens)]


@pytest.mark.parametrize("kind", ["toy", "bytelevel", "bytelevel-crossing", "metaspace"])
def test_chunks_join_to_the_batched_greedy_reply(kind: str) -> None:
    model, tok = toy_chat() if kind == "toy" else tiny_policy(kind)
    prompts = TOY_PROMPTS if kind == "toy" else BPE_PROMPTS
    n = 64 if kind == "toy" else 40
    batched = generate_responses(model, tok, prompts, GenerationConfig(max_new_tokens=n, batch_size=8))
    for prompt, want in zip(prompts, batched, strict=True):
        chunks = asyncio.run(collect(model, tok, prompt, n))
        assert "".join(chunks) == want
        assert len(chunks) > 1, "streamed, not returned at the end"
        assert all(chunks) and not chunks[0][0].isspace()
        assert all(c[0].isspace() and not c[-1].isspace() for c in chunks[1:]), "whole words"
    if kind == "toy":
        assert batched[0].startswith("here is how to make a bread")


def test_a_word_of_several_tokens_arrives_whole() -> None:
    class Bytes:
        """Token i is byte i; decoding replaces an incomplete UTF-8 sequence with U+FFFD."""

        def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
            return bytes(ids).decode("utf-8", errors="replace")

    dec = IncrementalDecoder(Bytes())
    out = [dec.push(b) for b in " café au".encode()]
    assert "".join(out) == "café" and out.count("café") == 1  # the split é never leaks as U+FFFD
    assert dec.finish() == " au"
    assert dec.sent == "café au"


def test_word_end() -> None:
    assert word_end("") == 0
    assert word_end("word") == 0
    assert word_end("one two") == 3
    assert word_end("one two  ") == 7
    assert word_end("one\n\ntw") == 3


def test_the_event_loop_runs_between_steps() -> None:
    model, tok = toy_chat()

    async def main() -> tuple[int, list[str]]:
        ticks = 0
        done = False

        async def ticker() -> None:
            nonlocal ticks
            while not done:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.ensure_future(ticker())
        await asyncio.sleep(0)
        start = ticks
        chunks = await collect(model, tok, TOY_PROMPTS[0], 64)
        done = True
        await task
        return ticks - start, chunks

    ticks, chunks = asyncio.run(main())
    # A step run on the loop's thread would starve the ticker; in a worker thread it ticks at least once
    # per step (one token per word here).
    assert ticks >= len(chunks)


def test_bad_max_new_tokens() -> None:
    model, tok = toy_chat()
    with pytest.raises(ValueError, match="max_new_tokens"):
        asyncio.run(collect(model, tok, "hi", 0))
