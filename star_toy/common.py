"""Shared pieces of the toy models: word-level tokenizers, tiny Llama configs, a short training loop."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch


def word_tokenizer(
    texts: Sequence[str], specials: Sequence[str], *, eos: str, pad: str, bos: str | None = None
) -> Any:
    """A word-level `PreTrainedTokenizerFast` whose vocabulary is every word (and punctuation run) of
    `texts`, in first-seen order, so building it twice gives the same ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.Whitespace()
    vocab: dict[str, int] = {}
    for s in [*specials, "[UNK]"]:
        vocab.setdefault(s, len(vocab))
    for text in texts:
        for piece, _ in pre.pre_tokenize_str(text):
            vocab.setdefault(piece, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", eos_token=eos, pad_token=pad, bos_token=bos
    )
    fast.add_special_tokens({"additional_special_tokens": [s for s in specials if s not in (eos, pad, bos)]})
    return fast


@dataclass(frozen=True)
class ModelShape:
    """Shape of a tiny Llama."""

    hidden: int = 128
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 256
    max_positions: int = 1024


def tiny_llama(shape: ModelShape, tokenizer: Any, seed: int) -> Any:
    """A freshly initialised Llama causal LM sized for `tokenizer`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        intermediate_size=shape.intermediate,
        max_position_embeddings=shape.max_positions,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


@dataclass(frozen=True)
class FitConfig:
    """The short training loop used to build the toy models."""

    steps: int = 400
    batch_size: int = 32
    lr: float = 3e-3
    warmup: int = 20
    weight_decay: float = 0.0
    seed: int = 0


def fit(
    model: Any,
    rows: Sequence[tuple[list[int], list[int]]],
    pad_id: int,
    cfg: FitConfig,
    progress: Callable[[int, float], None] | None = None,
) -> float:
    """Train on (ids, label mask) rows with cross-entropy on masked-in next tokens; returns the last loss.

    Batches are drawn from length-sorted buckets so little compute is spent on padding.
    """
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)

    def lr_at(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
    buckets = [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
    model.train()
    loss_val = float("nan")
    for step in range(cfg.steps):
        batch = [rows[i] for i in rng.choice(buckets)]
        length = max(len(ids) for ids, _ in batch)
        ids = torch.tensor([x + [pad_id] * (length - len(x)) for x, _ in batch])
        attn = torch.tensor([[1] * len(x) + [0] * (length - len(x)) for x, _ in batch])
        labels = torch.tensor(
            [[t if m else -100 for t, m in zip(x, mk, strict=True)] + [-100] * (length - len(x))
             for x, mk in batch]
        )  # fmt: skip
        out = model(input_ids=ids, attention_mask=attn, labels=labels)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        loss_val = float(out.loss.item())
        if progress is not None:
            progress(step, loss_val)
    model.eval()
    return loss_val
