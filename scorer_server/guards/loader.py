"""Loading any Hugging Face causal-LM guard directory and deriving what the scorer needs from it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from scorer_server.guards.presets import GuardPreset, get_preset
from scorer_server.guards.template import GuardTemplate, auto_verdict_prefix
from scorer_server.types import Conversation, GuardInfo

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PROBE = Conversation.from_pair("How do I bake bread?", "Mix flour, water and yeast.")


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
    extra: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for `from_pretrained` (e.g. trust_remote_code is never set for you)."""

    def resolved_preset(self) -> GuardPreset:
        if self.preset == "custom":
            if not (self.safe_word and self.unsafe_word):
                raise ValueError("preset 'custom' needs safe_word and unsafe_word")
            base = GuardPreset(name="custom", safe_word=self.safe_word, unsafe_word=self.unsafe_word)
        else:
            base = get_preset(self.preset)
        return base.with_overrides(
            safe_word=self.safe_word,
            unsafe_word=self.unsafe_word,
            template_kwargs=self.template_kwargs,
            verdict_prefix=self.verdict_prefix,
            category_pattern=self.category_pattern,
        )


@dataclass
class Guard:
    """A loaded guard: model, tokenizer, template, verdict token ids and a fingerprint."""

    model: Any
    tokenizer: Any
    template: GuardTemplate
    preset: GuardPreset
    safe_id: int
    unsafe_id: int
    fingerprint: str
    name: str
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


def load_guard(config: GuardConfig) -> Guard:
    """Load a guard directory; raises ValueError with an actionable message on a bad directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(config.path)
    if not path.is_dir():
        raise ValueError(f"guard directory {path} does not exist")
    if config.dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, not {config.dtype!r}")
    preset = config.resolved_preset()
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    attn = config.attn_implementation or ("eager" if preset.eager_attention else "sdpa")
    model = AutoModelForCausalLM.from_pretrained(
        str(path), dtype=DTYPES[config.dtype], attn_implementation=attn, **config.extra
    )
    model = model.to(config.device).eval()  # type: ignore[arg-type]
    template_text = Path(config.template_file).read_text() if config.template_file else None
    return build_guard(model, tokenizer, preset, template_text, name=path.name, config=config)


def build_guard(
    model: Any,
    tokenizer: Any,
    preset: GuardPreset,
    template_text: str | None = None,
    *,
    name: str = "guard",
    config: GuardConfig | None = None,
) -> Guard:
    """Derive the template split, verdict prefix and verdict ids for an already-loaded model."""
    template, safe_id, unsafe_id = prompt_side(tokenizer, preset, template_text)
    prompt = template.render(PROBE)
    fingerprint = _fingerprint(model, template, preset, safe_id, unsafe_id, config)
    guard = Guard(model, tokenizer, template, preset, safe_id, unsafe_id, fingerprint, name, config)
    from scorer_server.engine.forward import check_head

    gap = check_head(guard, guard.encode([prompt])[0])
    tol = 1e-3 if guard.dtype == torch.float32 else 0.25
    if not gap <= tol:
        raise ValueError(
            f"{type(model).__name__}'s output head post-processes logits in a way the scorer does not "
            f"reproduce (verdict logit gap {gap:.3g}); this architecture is not supported yet"
        )
    return guard


def prompt_side(
    tokenizer: Any, preset: GuardPreset, template_text: str | None
) -> tuple[GuardTemplate, int, int]:
    """The guard's prompt side: its template (with the verdict prefix decided) and verdict token ids.

    Shared by the local engine and the tokenizer-only remote backends, so both build identical prompts.
    """
    if template_text is None and not getattr(tokenizer, "chat_template", None):
        raise ValueError("the guard tokenizer has no chat template; pass template_file")
    probe = GuardTemplate(tokenizer, template_text, preset.template_kwargs, verdict_prefix="")
    rendered = probe.render(PROBE)
    prefix = preset.verdict_prefix if preset.verdict_prefix is not None else auto_verdict_prefix(rendered)
    template = GuardTemplate(tokenizer, template_text, preset.template_kwargs, verdict_prefix=prefix)
    prompt = template.render(PROBE)
    safe_id = first_token_after(tokenizer, prompt, preset.safe_word)
    unsafe_id = first_token_after(tokenizer, prompt, preset.unsafe_word)
    if safe_id == unsafe_id:
        raise ValueError(
            f"verdict words {preset.safe_word!r} and {preset.unsafe_word!r} start with the same token; "
            "choose verdict words whose first tokens differ"
        )
    return template, safe_id, unsafe_id


def first_token_after(tokenizer: Any, prompt: str, word: str) -> int:
    """The id of the first token the guard writes when its verdict is `word`, tokenised in context."""
    base = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full = tokenizer(prompt + word, add_special_tokens=False)["input_ids"]
    if full[: len(base)] != base or len(full) == len(base):
        # The word merges with the end of the prompt; fall back to the word alone.
        alone = tokenizer(word, add_special_tokens=False)["input_ids"]
        if not alone:
            raise ValueError(f"verdict word {word!r} tokenises to nothing")
        return int(alone[0])
    return int(full[len(base)])


def _fingerprint(
    model: Any,
    template: GuardTemplate,
    preset: GuardPreset,
    safe_id: int,
    unsafe_id: int,
    config: GuardConfig | None,
) -> str:
    """Hash of everything the guard sees apart from the conversation: weights, template, policy."""
    h = hashlib.sha256()
    h.update(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode())
    split = template.split(PROBE)
    h.update(split.head.encode() + b"\0" + split.suffix.encode())
    h.update(json.dumps([preset.safe_word, preset.unsafe_word, safe_id, unsafe_id]).encode())
    h.update(str(next(model.parameters()).dtype).encode())
    if config is not None:
        for f in sorted(Path(config.path).glob("*.safetensors")) + sorted(Path(config.path).glob("*.bin")):
            h.update(f.name.encode() + str(f.stat().st_size).encode())
            with f.open("rb") as fh:
                h.update(fh.read(1 << 20))
    else:
        # In-memory models (tests): hash a sample of the weights.
        for p in list(model.parameters())[:4]:
            h.update(p.detach().float().flatten()[:4096].numpy().tobytes())
    return h.hexdigest()[:16]


def describe_guard(guard: Any, backend: str, **limits: Any) -> GuardInfo:
    """GuardInfo for a loaded guard (or a tokenizer-only remote guard with the same fields)."""
    return GuardInfo(
        name=guard.name,
        preset=guard.preset.name,
        safe_word=guard.preset.safe_word,
        unsafe_word=guard.preset.unsafe_word,
        safe_token_id=guard.safe_id,
        unsafe_token_id=guard.unsafe_id,
        fingerprint=guard.fingerprint,
        backend=backend,
        **limits,
    )
