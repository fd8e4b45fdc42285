"""Tiny random-initialised trainee models (Llama-shaped, Llama-3-style chat template) for tests,
benchmarks and examples. Nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

from scorer_server.testing.tiny_guard import TinyGuardSpec, build_model, build_tokenizer

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


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
