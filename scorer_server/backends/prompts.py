"""The guard's prompt side without its weights: tokenizer, template, verdict token ids.

A remote backend renders and tokenises every cut here exactly as the local engine does (same
`GuardTemplate`, same verdict-prefix rule, same in-context verdict ids) and sends the prompts to an
engine that holds the weights.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from scorer_server.guards.guard import GuardSide
from scorer_server.guards.loader import (
    GuardConfig,
    hash_prompt_side,
    load_tokenizer,
    prompt_side,
    template_source,
)
from star_contract.errors import ConfigError


@dataclass
class PromptGuard(GuardSide):
    """A guard's tokenizer and template, enough to build every per-cut prompt."""

    def encode(self, text: str) -> list[int]:
        """Token ids of a rendered prompt (its special tokens are already in the text)."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def strip_bos(self, text: str) -> str:
        """The prompt without a leading BOS, for engines that add it while tokenising."""
        bos = getattr(self.tokenizer, "bos_token", None)
        return text[len(bos) :] if bos and text.startswith(bos) else text


def load_prompt_guard(config: GuardConfig, engine: str) -> PromptGuard:
    """Load only the tokenizer (no weights) of the guard directory `config.path`.

    `engine` names where the forwards run; it is part of the fingerprint, because a remote engine's
    numerics (kernels, dtype) are not the local engine's and cached scores must not be mixed.
    """
    path = Path(config.path)
    preset = config.resolved_preset()
    tokenizer = load_tokenizer(config.path)
    template_text = template_source(config.template_file, preset)
    template, reader = prompt_side(tokenizer, preset, template_text)
    if reader.nodes > 1:
        fields = ", ".join(f.name for f in preset.earlier)
        raise ConfigError(
            f"preset {preset.name!r} writes fields before its verdict ({fields}); the {engine} backend "
            "reads one position per request, so serve this guard with --backend local"
        )
    class_ids = reader.class_ids
    h = hashlib.sha256(f"remote:{engine}\0".encode())
    config_file = path / "config.json"
    if config_file.is_file():
        h.update(config_file.read_bytes())
    hash_prompt_side(h, template, preset, class_ids)
    fingerprint = h.hexdigest()[:16]
    return PromptGuard(
        tokenizer, template, preset, class_ids[0], class_ids[1], fingerprint, path.name, class_ids, reader
    )
