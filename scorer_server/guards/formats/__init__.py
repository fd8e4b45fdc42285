"""Guard prompts the presets bring for guards whose directory has only a general chat template, or none.

- `nemoguard.jinja`: Llama-3.1-Nemotron-Safety-Guard-8B-v3 / NemoGuard-8B-ContentSafety. The published
  construction is two steps: NeMo Guardrails renders its content-safety task prompt (the conversation and
  the 23-category taxonomy) and sends it as the user message of a chat, to which the Llama 3.1 Instruct
  chat template is applied. This template renders that final text directly from a [user, assistant]
  conversation (tests/test_real_guard_formats.py checks it byte for byte against the two steps).
- `wildguard.jinja`: allenai/wildguard, which has no chat template: the BOS token, then the library's
  input format filled with the user's request and the assistant's response (checked the same way).
"""

from __future__ import annotations

from importlib.resources import files


def read_format(name: str) -> str:
    """The text of one of the templates here (e.g. "nemoguard.jinja")."""
    return files(__name__).joinpath(name).read_text(encoding="utf-8")
