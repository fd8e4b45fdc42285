"""Batched greedy generation for chat models: left padding, the tokenizer's chat template, decoded replies."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class GenerationConfig:
    """How responses are generated."""

    max_new_tokens: int = 512
    """Tokens generated per response (the published landscape setup uses 512)."""
    batch_size: int = 16
    """Prompts per `generate` call; prompts are sorted by length first to limit padding."""
    system_prompt: str | None = None
    """An optional system message put before every prompt."""


def chat_texts(tokenizer: Any, prompts: Sequence[str], system_prompt: str | None = None) -> list[str]:
    """Render each prompt as a one-turn chat ending with the assistant header.

    Tokenizers without a chat template get a plain "User: ...\\nAssistant:" layout.
    """
    out = []
    for p in prompts:
        messages = [{"role": "user", "content": p}]
        if system_prompt:
            messages.insert(0, {"role": "system", "content": system_prompt})
        if getattr(tokenizer, "chat_template", None):
            out.append(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        else:
            head = f"{system_prompt}\n\n" if system_prompt else ""
            out.append(f"{head}User: {p}\nAssistant:")
    return out


def pad_id(tokenizer: Any) -> int:
    """The pad token id, falling back to EOS (and 0) for tokenizers without one."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if isinstance(candidate, int):
            return candidate
        if isinstance(candidate, list) and candidate:
            return int(candidate[0])
    return 0


@torch.inference_mode()
def generate_responses(
    model: Any, tokenizer: Any, prompts: Sequence[str], config: GenerationConfig | None = None
) -> list[str]:
    """Greedy responses to `prompts`, in order, decoded without special tokens."""
    cfg = config or GenerationConfig()
    if cfg.batch_size < 1 or cfg.max_new_tokens < 1:
        raise ValueError("batch_size and max_new_tokens must be >= 1")
    texts = chat_texts(tokenizer, prompts, cfg.system_prompt)
    # The rendered template already holds BOS where the model wants one.
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    device = next(model.parameters()).device
    pid = pad_id(tokenizer)
    out: list[str] = [""] * len(prompts)
    for start in range(0, len(order), cfg.batch_size):
        idx = order[start : start + cfg.batch_size]
        rows = [encoded[i] for i in idx]
        length = max(len(r) for r in rows)
        ids = torch.tensor([[pid] * (length - len(r)) + r for r in rows], device=device)
        attn = torch.tensor([[0] * (length - len(r)) + [1] * len(r) for r in rows], device=device)
        gen = model.generate(
            input_ids=ids,
            attention_mask=attn,
            max_new_tokens=cfg.max_new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=pid,
        )
        decoded = tokenizer.batch_decode(gen[:, length:], skip_special_tokens=True)
        for i, text in zip(idx, decoded, strict=True):
            out[i] = text.strip()
    return out
