"""The toy aligned chat model: a tiny Llama that does the old benign tasks and refuses hazard requests.

It never sees the new skill (`lexicon.NEW_SKILL`); that is what the finetuning mix teaches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from star_toy import datasets, generators
from star_toy.common import FitConfig, ModelShape, fit, tiny_llama, word_tokenizer

SPECIALS = ["<|user|>", "<|assistant|>", "<|system|>", "<|end|>", "<|pad|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)
"""Each turn is `<|role|> text <|end|>`; earlier turns render as a prefix of the whole conversation."""


@dataclass(frozen=True)
class ChatBuildConfig:
    """How the toy aligned chat model is built."""

    shape: ModelShape = field(default_factory=lambda: ModelShape(hidden=128, layers=3, intermediate=256))
    fit: FitConfig = field(default_factory=lambda: FitConfig(steps=1500, batch_size=32, lr=3e-3, seed=0))
    world: datasets.WorldConfig = field(default_factory=datasets.WorldConfig)
    seed: int = 0


def build_tokenizer() -> Any:
    """The chat model's own word-level tokenizer (the world's vocabulary) with its chat template."""
    tok = word_tokenizer([" ".join(generators.vocabulary())], SPECIALS, eos="<|end|>", pad="<|pad|>")
    tok.chat_template = CHAT_TEMPLATE
    return tok


def training_rows(tok: Any, examples: Sequence[generators.Example]) -> list[tuple[list[int], list[int]]]:
    """(ids, label mask) rows: the loss is on the assistant reply and its end-of-turn token."""
    rows = []
    for ex in examples:
        msgs = ex.messages()
        head = tok(tok.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True),
                   add_special_tokens=False)["input_ids"]  # fmt: skip
        full = tok(tok.apply_chat_template(msgs, tokenize=False), add_special_tokens=False)["input_ids"]
        rows.append((full, [0] * len(head) + [1] * (len(full) - len(head))))
    return rows


def build_chat(
    out_dir: str | Path,
    cfg: ChatBuildConfig | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> Path:
    """Train the aligned chat model on the old tasks and refusals; save it as a model directory."""
    cfg = cfg or ChatBuildConfig()
    tok = build_tokenizer()
    model = tiny_llama(cfg.shape, tok, cfg.seed)
    fit(model, training_rows(tok, datasets.aligned_examples(cfg.world)), tok.pad_token_id, cfg.fit, progress)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out
