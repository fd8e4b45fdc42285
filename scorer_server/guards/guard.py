"""A guard as the scorer holds it: its tokenizer, template and verdict tokens, and its loaded model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from scorer_server.guards.presets import GuardPreset
from scorer_server.guards.reader import VerdictReader
from scorer_server.guards.template import GuardTemplate

if TYPE_CHECKING:
    from scorer_server.guards.guard_config import GuardConfig


@dataclass
class GuardSide:
    """What both a loaded guard and a weights-free remote prompt side know about a guard."""

    tokenizer: Any
    template: GuardTemplate
    preset: GuardPreset
    safe_id: int
    unsafe_id: int
    fingerprint: str
    name: str
    class_ids: tuple[int, ...] = ()
    """Token ids of the preset's verdict classes, in `preset.classes` order (safe_id and unsafe_id are
    the first two), each the first token of its word tokenised in context."""
    reader: VerdictReader = field(default_factory=VerdictReader)
    """Where the verdict is read and how P(safe) combines what is read there (guards/reader.py)."""

    @property
    def safe_classes(self) -> tuple[bool, ...]:
        """Per verdict class, whether it counts as safe."""
        return tuple(c.safe for c in self.preset.classes)


@dataclass
class Guard(GuardSide):
    """A loaded guard: its model, plus the tokenizer, template, verdict token ids and a fingerprint."""

    model: Any = None
    config: GuardConfig | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Tokenise rendered prompts exactly as the guard sees them (special tokens are in the text)."""
        out = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [list(x) for x in out]
