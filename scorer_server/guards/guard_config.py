"""GuardConfig: which guard to load and how to drive it. Kept free of torch, so that reading the
server's flags (and `--help`) does not load it: OMP_WAIT_POLICY must be set before torch loads OpenMP."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from scorer_server.guards.presets import GuardPreset, get_preset
from star_contract.errors import ConfigError

DTYPE_NAMES = ("bfloat16", "float16", "float32")


@dataclass(frozen=True)
class GuardConfig:
    """Which guard to load and how to drive it."""

    path: str
    """A local guard directory (config, weights, tokenizer with a chat template). Never a hub id."""
    preset: str = "llama-guard-3"
    """A preset name (see `scorer_server.guards.presets.PRESETS`) or 'custom'."""
    dtype: str = "float32"
    device: str = "cpu"
    attn_implementation: str | None = None
    """'eager' or 'sdpa'; None = the preset's choice (eager for Gemma 2 guards), else sdpa."""
    template_file: str | None = None
    """A Jinja chat template that overrides the tokenizer's own."""
    template_kwargs: dict[str, Any] | None = None
    """Template keyword arguments; replaces the preset's (a policy, a category list, a risk name)."""
    safe_word: str | None = None
    unsafe_word: str | None = None
    verdict_prefix: str | None = None
    category_pattern: str | None = None
    safe_classes: tuple[str, ...] = ()
    """Verdict classes that also count as safe (Qwen3Guard's "Controversial" read loose)."""
    earlier_mode: str = "argmax"
    """How fields written before the verdict are taken: argmax or marginal (guards/reader.py)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for `from_pretrained` (e.g. trust_remote_code is never set for you)."""

    def __post_init__(self) -> None:
        if self.dtype not in DTYPE_NAMES:  # at flag reading, before torch and the weights load
            raise ConfigError(f"--dtype must be one of {', '.join(DTYPE_NAMES)}, not {self.dtype!r}")

    def resolved_preset(self) -> GuardPreset:
        if self.preset == "custom":
            if not (self.safe_word and self.unsafe_word):
                raise ConfigError("preset 'custom' needs --safe-word and --unsafe-word")
            base = GuardPreset(name="custom", safe_word=self.safe_word, unsafe_word=self.unsafe_word)
        else:
            base = get_preset(self.preset)
        preset = base.with_overrides(
            safe_word=self.safe_word,
            unsafe_word=self.unsafe_word,
            template_kwargs=self.template_kwargs,
            verdict_prefix=self.verdict_prefix,
            category_pattern=self.category_pattern,
        )
        if self.earlier_mode not in ("argmax", "marginal"):
            raise ConfigError(f"--earlier-fields must be argmax or marginal, not {self.earlier_mode!r}")
        preset = replace(preset, earlier_mode=self.earlier_mode)
        return preset.counting_safe(self.safe_classes) if self.safe_classes else preset
