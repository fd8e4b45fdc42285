"""Greedy generation as an async stream of text chunks, for guarding a reply while it is generated.

    async for text in stream_greedy(model, tokenizer, "How do I ...?"):
        send(text)

The chunks join to exactly what `generation.generate_responses` returns for the same prompt (the same
chat rendering, greedy steps with a key-value cache, the same decoding), so a streamed reply and a
batched one can be compared character for character.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

import torch

from trainer_client.generation import chat_texts


def word_end(text: str) -> int:
    """The length of the longest prefix of `text` that surely ends a word: up to the last non-space
    character before the last run of whitespace (0 when `text` holds no whitespace after a word).

    A word still being written (no whitespace after it yet) may change with the next token: a subword,
    the missing bytes of a character, a space that the tokenizer's clean-up later removes."""
    i = len(text)
    while i and not text[i - 1].isspace():
        i -= 1
    while i and text[i - 1].isspace():
        i -= 1
    return i


class IncrementalDecoder:
    """Turns generated token ids, one at a time, into text chunks whose concatenation is exactly
    `tokenizer.decode(ids, skip_special_tokens=True).strip()`.

    Each step decodes all the ids so far and passes on the new complete words (the whitespace before a
    word travels with it). The word being written is held back until whitespace follows it or `finish`
    is called, so a word split over several tokens (subwords, the bytes of one character) arrives whole.
    Text in a script without spaces between words therefore waits for the end."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.sent = ""
        """The text passed on so far."""

    def _text(self) -> str:
        return str(self.tokenizer.decode(self.ids, skip_special_tokens=True)).lstrip()

    def push(self, token_id: int) -> str:
        """Add one generated token; the new text that is now final ('' when there is none)."""
        self.ids.append(token_id)
        text = self._text()
        end = word_end(text)
        if end <= len(self.sent) or not text.startswith(self.sent):
            return ""
        chunk = text[len(self.sent) : end]
        self.sent = text[:end]
        return chunk

    def finish(self) -> str:
        """The rest of the text once generation has ended."""
        text = self._text().rstrip()
        if not text.startswith(self.sent):
            raise RuntimeError(
                f"the tokenizer's decoding changed text already streamed: {self.sent[-40:]!r} is no longer "
                f"a prefix of the reply ({text[: len(self.sent)][-40:]!r})"
            )
        chunk = text[len(self.sent) :]
        self.sent = text
        return chunk


def eos_ids(model: Any, tokenizer: Any) -> set[int]:
    """The token ids that end a reply: the model's generation config's, else the tokenizer's EOS."""
    gen_cfg = getattr(model, "generation_config", None)
    eos = getattr(gen_cfg, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return set()
    return {int(e) for e in eos} if isinstance(eos, list | tuple) else {int(eos)}


class GreedyStepper:
    """One greedy decoding step at a time over a key-value cache: the first `step` reads the prompt,
    each later one the previous token."""

    def __init__(self, model: Any, prompt_ids: list[int]) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self._next = torch.tensor([prompt_ids], device=self.device)
        self._cache: Any = None

    def step(self) -> int:
        """Run the model on the pending tokens and return the most likely next token."""
        # inference_mode is thread-local: entered here, in whichever thread runs the step.
        with torch.inference_mode():
            out = self.model(input_ids=self._next, cache=self._cache, use_cache=True, logits_to_keep=1)
        self._cache = out.cache
        token = int(out.logits[0, -1].argmax())
        self._next = torch.tensor([[token]], device=self.device)
        return token


async def stream_greedy(
    model: Any,
    tokenizer: Any,
    prompt: str,
    *,
    max_new_tokens: int = 512,
    system_prompt: str | None = None,
) -> AsyncGenerator[str, None]:
    """The greedy reply to `prompt`, as text chunks while it is generated.

    The prompt is rendered like `generate_responses` renders it (the tokenizer's chat template, an
    optional system message); each decoding step runs in a worker thread (`asyncio.to_thread`) so the
    event loop, and any gRPC stream on it, keeps moving. Generation ends at an end-of-sequence token or
    after `max_new_tokens`. The chunks (complete words with the whitespace before them, see
    `IncrementalDecoder`) join to exactly `generate_responses(model, tokenizer, [prompt])[0]` for a model
    whose generation config adds no logits processors. Leaving the loop early stops generation (close the
    generator, e.g. with `contextlib.aclosing`, to free its cache at once)."""
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be >= 1")
    text = chat_texts(tokenizer, [prompt], system_prompt)[0]
    # The rendered template already holds BOS where the model wants one (as in generate_responses).
    stepper = GreedyStepper(model, tokenizer(text, add_special_tokens=False)["input_ids"])
    stop = eos_ids(model, tokenizer)
    decoder = IncrementalDecoder(tokenizer)
    for _ in range(max_new_tokens):
        token = await asyncio.to_thread(stepper.step)
        if token in stop:
            break
        if chunk := decoder.push(token):
            yield chunk
    if chunk := decoder.finish():
        yield chunk
