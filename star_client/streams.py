"""The text of one chunk of a streamed completion, whatever client produced it.

`ModerationSession.guard` takes the stream a caller already has and passes its chunks on unchanged, so a
proxy can forward an OpenAI-style stream to its own client chunk for chunk; this module says which text
each chunk carries. Duck-typed, so no client library is imported:

- a `str`: the text itself;
- an OpenAI-style chunk, as an object (the `openai` SDK's `ChatCompletionChunk` / `Completion`,
  huggingface_hub's `ChatCompletionStreamOutput`) or as the parsed JSON of a server-sent event (vLLM's
  and TGI's `/v1/chat/completions` and `/v1/completions`): `choices[i].delta.content` or
  `choices[i].text` of the choice with index 0 (role-only, usage-only and tool-call chunks carry none);
- TGI's own `/generate_stream` event (huggingface_hub's `TextGenerationStreamOutput` or its JSON):
  `token.text`, except for special tokens.
"""

from __future__ import annotations

from typing import Any


def _field(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def chunk_text(chunk: Any) -> str:
    """The response text `chunk` adds ('' when it adds none). Raises TypeError for a chunk of no
    known shape, so a wrong stream fails loudly instead of moderating nothing."""
    if isinstance(chunk, str):
        return chunk
    choices = _field(chunk, "choices")
    if choices is not None:
        for choice in choices:
            if (_field(choice, "index") or 0) != 0:
                continue
            delta = _field(choice, "delta")
            text = _field(delta, "content") if delta is not None else _field(choice, "text")
            return text if isinstance(text, str) else ""
        return ""
    token = _field(chunk, "token")
    if token is not None:
        return "" if _field(token, "special") else str(_field(token, "text") or "")
    raise TypeError(
        f"cannot read text from a stream chunk of type {type(chunk).__name__}: pass str chunks, or "
        "OpenAI-style (choices[0].delta.content / choices[0].text) or TGI-style (token.text) chunks"
    )
