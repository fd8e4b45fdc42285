"""Tiny random-initialised chat models (Llama-shaped, Llama-3-style chat template): trainees for the
training tests and demos, policies for the landscape tests and benchmarks. Nothing is downloaded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from star_testing.tiny_guard import TinyGuardSpec, build_model, build_tokenizer

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


TRAINING_RESPONSES = (
    "Sure, here is how to do it step by step. First, take the flour; then mix the rest.",
    "I cannot help with that request. As an AI, I'm sorry.",
    "Mix flour, water and yeast, then bake it for 42 minutes at 100 degrees until done.",
    "The quick brown fox jumps over the lazy dog, then sorts a list in reverse.",
)
"""Responses of the tiny training runs: a compliance, a refusal, a recipe and a benign task."""


def save_tiny_run(root: str | Path, examples: int) -> Path:
    """A folder for a tiny finetuning run: `trainee/` (see `save_tiny_trainee`) and `data.jsonl` with
    `examples` (prompt, response) rows cycling through TRAINING_RESPONSES. Returns `root`."""
    out = Path(root)
    save_tiny_trainee(out / "trainee")
    with (out / "data.jsonl").open("w") as fh:
        for i in range(examples):
            row = {
                "prompt": f"How do I do thing {i}?",
                "response": TRAINING_RESPONSES[i % len(TRAINING_RESPONSES)],
            }
            fh.write(json.dumps(row) + "\n")
    return out


def save_tiny_trainee(
    path: str | Path, tokenizer: str = "bytelevel-crossing", hidden: int = 64, layers: int = 2, seed: int = 1
) -> Path:
    """Write a tiny trainee directory (model + tokenizer with a chat template) and return its path."""
    spec = TinyGuardSpec(
        family="llama",
        tokenizer=tokenizer,
        hidden=hidden,
        layers=layers,
        seed=seed,
        intermediate=2 * hidden,
        init_range=0.02,
    )
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(spec)
    tok.chat_template = CHAT_TEMPLATE
    model = build_model(spec, len(tok))
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def build_tiny_policy(
    hidden: int = 64, layers: int = 2, intermediate: int = 128, vocab: int = 600, seed: int = 0
) -> tuple[Any, Any]:
    """(model, tokenizer): a random Llama, a BPE tokenizer trained here, a Llama-3-like chat template."""
    tok = build_tokenizer(TinyGuardSpec(family="llama", vocab=vocab))
    tok.chat_template = CHAT_TEMPLATE
    spec = TinyGuardSpec(
        family="llama", hidden=hidden, layers=layers, intermediate=intermediate, init_range=0.2, seed=seed
    )
    model = build_model(spec, len(tok), max_positions=2048, tokenizer=tok)
    return model, tok


def save_tiny_policy(path: str | Path, **kwargs: Any) -> Path:
    """Build a tiny policy (see `build_tiny_policy`) and save it as an ordinary model directory."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    model, tok = build_tiny_policy(**kwargs)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(
        description="Write a tiny random-initialised trainee directory (tests, demos)."
    )
    ap.add_argument("out", help="directory to write")
    ap.add_argument(
        "--tokenizer",
        default="bytelevel-crossing",
        choices=["bytelevel", "bytelevel-crossing", "metaspace"],
        help="tokenizer kind; bytelevel-crossing merges across word boundaries",
    )
    ap.add_argument("--hidden", type=int, default=64, help="hidden size")
    ap.add_argument("--layers", type=int, default=2, help="transformer layers")
    args = ap.parse_args(argv)
    print(save_tiny_trainee(args.out, args.tokenizer, args.hidden, args.layers))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
