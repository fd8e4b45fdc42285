"""The text of streamed completion chunks (star_client.streams.chunk_text), and `session.guard` passing
chunks of any of those shapes through a real scorer.

The chunks are parsed into huggingface_hub's own stream types from the JSON that vLLM and TGI send
(the shapes of their server-sent events: `choices[0].delta.content` on the chat route, `choices[0].text`
on the completions route, `token.text` on TGI's /generate_stream); tests/test_vllm_real.py streams
from a real vLLM. The `openai` SDK is not installed here; its chunk objects have the same attributes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from huggingface_hub import ChatCompletionStreamOutput, TextGenerationStreamOutput

from star_client.streams import chunk_text
from star_contract.types import Conversation, ModerateOptions


def chat_event(content: str | None, index: int = 0, role: str | None = None) -> dict[str, Any]:
    delta: dict[str, Any] = {"content": content} if content is not None else {}
    if role:
        delta["role"] = role
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": None}],
    }


def completion_event(text: str) -> dict[str, Any]:
    return {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": None}]}  # fmt: skip


def tgi_event(text: str, special: bool = False) -> dict[str, Any]:
    return {"index": 1, "token": {"id": 5, "text": text, "logprob": -0.1, "special": special},
            "generated_text": None, "details": None}  # fmt: skip


def test_each_shape_gives_its_text() -> None:
    assert chunk_text("plain") == "plain"
    assert chunk_text(chat_event(" flour")) == " flour"
    assert chunk_text(ChatCompletionStreamOutput.parse_obj_as_instance(chat_event(" flour"))) == " flour"
    assert chunk_text(chat_event(None, role="assistant")) == ""  # the first chunk: role only
    assert chunk_text({**chat_event("x"), "choices": []}) == ""  # the last chunk: usage only
    assert chunk_text(chat_event("other choice", index=1)) == ""
    assert chunk_text(completion_event("mix")) == "mix"
    assert chunk_text(TextGenerationStreamOutput.parse_obj_as_instance(tgi_event(" bake"))) == " bake"
    assert chunk_text(tgi_event("</s>", special=True)) == ""


def test_a_chunk_of_no_known_shape_is_refused() -> None:
    with pytest.raises(TypeError, match="cannot read text from a stream chunk of type int"):
        chunk_text(3)


def test_guard_passes_chat_chunks_through_and_closes_the_stream_on_a_stop(start_server: Any) -> None:
    """OpenAI-style chunk objects go through unchanged; on the stop the upstream stream is closed
    (what ends the generation on vLLM / TGI)."""
    from star_client import AsyncScorerClient

    server = start_server("--max-wait-ms", "2")
    words = ["Sure,", "first", "mix", "the", "flour", "then", "bake", "it", "at", "220", "C", "until"]
    closed: list[bool] = []

    async def upstream(pace_s: float) -> AsyncIterator[ChatCompletionStreamOutput]:
        try:
            yield ChatCompletionStreamOutput.parse_obj_as_instance(chat_event(None, role="assistant"))
            for i, w in enumerate(words):
                yield ChatCompletionStreamOutput.parse_obj_as_instance(
                    chat_event(("" if i == 0 else " ") + w)
                )
                await asyncio.sleep(pace_s)
        finally:
            closed.append(True)

    async def run(unsafe_below: float) -> tuple[list[Any], Any]:
        async with AsyncScorerClient(server.address) as client:
            conv = Conversation.from_pair("How do I bake bread?", "")
            async with client.moderate(conv, ModerateOptions(every=2, unsafe_below=unsafe_below)) as s:
                passed = [c async for c in s.guard(upstream(0.05))]
        return passed, s

    passed, session = asyncio.run(run(0.0))  # never unsafe: everything passes, the last cut is the end
    assert all(isinstance(c, ChatCompletionStreamOutput) for c in passed) and len(passed) == len(words) + 1
    assert session.stop is None and session.segments[-1].end == len(" ".join(words))
    passed, session = asyncio.run(run(1.0))  # every cut unsafe: stopped at the first cut
    assert session.stop is not None and session.stop.offset == 0
    assert len(passed) < len(words) + 1 and closed == [True, True]
