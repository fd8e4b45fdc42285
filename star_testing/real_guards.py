"""Guard directories with the real chat templates of published guards and random tiny weights.

The templates are read, byte-exact, from a folder of real guard artefacts (the project's tests use
`../shared/guard-templates/`, see its SOURCES.md); nothing is copied into the repository and nothing
is downloaded. Each directory pairs a template with a model of its family's architecture:

- Llama Guard 3 (1B and 8B templates): the real Llama 3 tokenizer, converted from Meta's tiktoken
  `tokenizer.model` with transformers' own converter, and a tiny Llama with the full 128,256-token vocab.
- Granite Guardian 3.0 / 3.2: a tiny Granite (embedding, residual and attention multipliers, logit
  scaling) with a small BPE tokenizer holding Granite's role tokens.
- ShieldGemma: a tiny Gemma 2 (attention and final logit soft-capping, a sliding window far shorter
  than the prompt) with a SentencePiece-style (metaspace) tokenizer holding Gemma's turn tokens.

No real Granite or Gemma tokenizer is available here (see SOURCES.md), so those two use stand-ins
with the families' special tokens; the templates are the real ones.

Round 2 (SOURCES-2.md; `REAL_GUARDS_2`, `save_real_guard_2`): Qwen3Guard-Gen, Llama Guard 4, NemoGuard
and WildGuard, each with its real tokenizer (`real_tokenizers`), the real template or our own
(`guard_formats`), and a tiny model with the tokenizer's full vocabulary; and Granite Guardian 3.3, with
a reconstructed template and, as no Granite tokenizer is available, the stand-in Granite tokenizer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from star_testing import guard_formats
from star_testing.real_tokenizers import llama4_tokenizer, mistral_v3_tokenizer, qwen3_tokenizer
from star_testing.tiny_guard import TinyGuardSpec, build_model, build_tokenizer

__all__ = [
    "REAL_GUARDS",
    "REAL_GUARDS_2",
    "RealGuard",
    "RealGuard2",
    "find_guard_templates",
    "in_ci",
    "llama3_tokenizer",
    "llama4_tokenizer",
    "mistral_v3_tokenizer",
    "qwen3_tokenizer",
    "real_tokenizer",
    "require_guard_templates",
    "save_named_real_guard",
    "save_real_guard",
    "save_real_guard_2",
]

LLAMA3_SPECIALS = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|step_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
    "<|image|>",
)
"""Llama 3's named special tokens, in id order from 128000 (models/llama3/tokenizer.py)."""
LLAMA3_SPECIAL_COUNT = 256


@dataclass(frozen=True)
class RealGuard:
    """One published guard's template and how it is driven."""

    name: str
    template_file: str
    family: str
    """'llama' (real Llama 3 tokenizer), 'granite' or 'gemma'."""
    preset: str
    content_form: str
    """How the template reads message content: 'text' or 'parts' (typed parts)."""
    verdict_prefix: str
    """What the guard writes before its verdict word (Llama templates end at the header)."""
    accepts_system: bool
    """Whether the template renders a conversation that starts with a system message."""


REAL_GUARDS: tuple[RealGuard, ...] = (
    RealGuard("llama-guard-3-1b", "llama-guard-3-1b.chat_template.jinja", "llama", "llama-guard-3",
              "parts", "\n\n", accepts_system=False),
    RealGuard("llama-guard-3-8b", "llama-guard-3-8b.chat_template.jinja", "llama", "llama-guard-3",
              "text", "\n\n", accepts_system=False),
    RealGuard("granite-guardian-3.0-2b", "granite-guardian-3.0-2b.chat_template.jinja", "granite",
              "granite-guardian-3", "text", "", accepts_system=True),
    RealGuard("granite-guardian-3.2-5b", "granite-guardian-3.2-5b.chat_template.jinja", "granite",
              "granite-guardian-3", "text", "", accepts_system=True),
    RealGuard("shieldgemma", "shieldgemma.chat_template.jinja", "gemma", "shieldgemma",
              "text", "", accepts_system=True),
)  # fmt: skip


def find_guard_templates(test_file: str | Path) -> tuple[Path, str | None]:
    """The folder of real guard artefacts for the checkout holding `test_file` (`STAR_GUARD_TEMPLATES`,
    else `shared/guard-templates` next to the checkout), and why it cannot be used (None when it can)."""
    env = os.environ.get("STAR_GUARD_TEMPLATES")
    folder = Path(env) if env else Path(test_file).resolve().parents[2] / "shared" / "guard-templates"
    if (folder / "SOURCES.md").is_file():
        return folder, None
    return folder, f"the real guard templates are not at {folder} (set STAR_GUARD_TEMPLATES)"


def in_ci() -> bool:
    """Whether this runs in CI (`CI=true`, as CI sets it): there, missing shared artefacts are an error."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def require_guard_templates(test_file: str | Path) -> Path:
    """The folder of real guard artefacts for the tests in `test_file`'s checkout. Without it the
    calling test is skipped, with the reason; in CI (`CI=true`) it fails instead, since CI lays the
    shared folder beside the checkout and a silent skip there would hide the real-template tests."""
    import pytest

    folder, missing = find_guard_templates(test_file)
    if missing is None:
        return folder
    if in_ci():
        pytest.fail(f"{missing}; CI=true, where the shared folder must be present", pytrace=False)
    pytest.skip(missing)


def llama3_tokenizer(tiktoken_file: str | Path) -> Any:
    """The real Llama 3 fast tokenizer, converted from Meta's tiktoken BPE ranks."""
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    reserved = [
        f"<|reserved_special_token_{2 + i}|>" for i in range(LLAMA3_SPECIAL_COUNT - len(LLAMA3_SPECIALS))
    ]
    converted = TikTokenConverter(
        vocab_file=str(tiktoken_file), extra_special_tokens=[*LLAMA3_SPECIALS, *reserved]
    ).converted()
    return PreTrainedTokenizerFast(
        tokenizer_object=converted,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|finetune_right_pad_id|>",
    )


def save_named_real_guard(out: str | Path, name: str, artefacts: str | Path) -> tuple[Path, RealGuard]:
    """`save_real_guard` for the guard of REAL_GUARDS called `name` (the Llama 3 tokenizer converted
    here when it needs it): the directory and the guard's description."""
    guard = next(g for g in REAL_GUARDS if g.name == name)
    tok = llama3_tokenizer(Path(artefacts) / "llama3.tokenizer.model") if guard.family == "llama" else None
    return save_real_guard(out, guard, artefacts, tok), guard


def save_real_guard(
    out: str | Path, guard: RealGuard, artefacts: str | Path, llama_tokenizer: Any = None
) -> Path:
    """Write a guard directory: `guard`'s real template (read from `artefacts`), its family's
    tokenizer and random tiny weights of its family's architecture. Pass `llama_tokenizer` to reuse
    one conversion of the Llama 3 tokenizer across directories."""
    folder = Path(artefacts)
    template = (folder / guard.template_file).read_text(encoding="utf-8")
    kind = "metaspace" if guard.family == "gemma" else "bytelevel"
    spec = TinyGuardSpec(family=guard.family, tokenizer=kind)
    if guard.family == "llama":
        tok = llama_tokenizer or llama3_tokenizer(folder / "llama3.tokenizer.model")
    else:
        tok = build_tokenizer(spec, corpus=[template])
    tok.chat_template = template
    model = build_model(spec, len(tok))
    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(target))
    tok.save_pretrained(str(target))
    return target


@dataclass(frozen=True)
class RealGuard2:
    """One of round 2's guards (SOURCES-2.md): its tokenizer, template and what it writes."""

    name: str
    tokenizer: str
    """`real_tokenizer` kind: 'qwen3', 'llama4', 'llama3', 'mistral-v3', or 'granite': a stand-in (a small
    BPE with Granite's role tokens, `tiny_guard.build_tokenizer`), whose ids mean nothing."""
    template: str
    """The shared artefact file (origin 'real'), our `guard_formats` file ('reconstructed'), or "" (the
    guard ships no chat template: WildGuard)."""
    origin: str
    """'real' (the template the guard's directory ships), 'reconstructed' (ours, from renders of a
    template we do not have) or 'none'. NemoGuard's directory ships the general Llama 3.1 Instruct
    template and WildGuard's none: the scorer's presets bring their guard prompts
    (scorer_server/guards/formats)."""
    architecture: str
    """The tiny model's architecture: 'qwen3', 'llama', 'mistral' or 'granite'."""
    verdict_prefix: str
    """What the guard writes between the rendered prompt and its (first) verdict word."""
    safe_word: str
    unsafe_word: str
    response_prefix: str
    """What it writes before the verdict on the response (a safe prompt verdict and no refusal assumed)
    when that is not the first verdict; equal to `verdict_prefix` when it is."""

    @property
    def tokenizer_is_real(self) -> bool:
        return self.tokenizer != "granite"


REAL_GUARDS_2: tuple[RealGuard2, ...] = (
    RealGuard2("qwen3guard-gen", "qwen3", "qwen3guard-gen.chat_template.jinja", "real", "qwen3",
               "Safety:", " Safe", " Unsafe", "Safety:"),
    RealGuard2("llama-guard-4", "llama4", guard_formats.LLAMA_GUARD_4, "reconstructed", "llama",
               "\n\n", "safe", "unsafe", "\n\n"),
    RealGuard2("nemoguard", "llama3", guard_formats.LLAMA_31_TEMPLATE, "real", "llama",
               '{"User Safety": "', "safe", "unsafe", '{"User Safety": "safe", "Response Safety": "'),
    RealGuard2("wildguard", "mistral-v3", "", "none", "mistral",
               "Harmful request:", " no", " yes",
               "Harmful request: no\nResponse refusal: no\nHarmful response:"),
    # the score follows an empty think block in no-think mode (assumed: its whitespace is not witnessed)
    RealGuard2("granite-guardian-3.3", "granite", guard_formats.GRANITE_GUARDIAN_3_3, "reconstructed",
               "granite", "<think>\n</think>\n<score>", " no", " yes", "<think>\n</think>\n<score>"),
    # its directory ships Granite 4.1's general template; the preset adds the criterion turn
    RealGuard2("granite-guardian-4.1", "granite", guard_formats.GRANITE_4_1, "reconstructed",
               "granite", "<think>\n</think>\n<score>", " no", " yes", "<think>\n</think>\n<score>"),
)  # fmt: skip


def real_tokenizer(kind: str, artefacts: str | Path) -> Any:
    """The real tokenizer of `kind` (see RealGuard2.tokenizer), built from the shared artefacts."""
    folder = Path(artefacts)
    if kind == "qwen3":
        return qwen3_tokenizer(folder)
    if kind == "llama4":
        return llama4_tokenizer(folder)
    if kind == "llama3":
        return llama3_tokenizer(folder / "llama3.tokenizer.model")
    if kind == "mistral-v3":
        return mistral_v3_tokenizer(folder)
    raise ValueError(f"no real tokenizer {kind!r}")


def tiny_model(architecture: str, tokenizer: Any, spec: TinyGuardSpec | None = None) -> Any:
    """Random tiny weights of `architecture` with the tokenizer's full vocabulary (`len(tokenizer)`) and
    its BOS/EOS/PAD ids. 'llama' and 'granite' are `tiny_guard.build_model`'s; Llama stands in for Llama
    Guard 4's Llama 4 text model (its MoE layers and chunked attention do not change how a verdict is
    read), Qwen3 and Mistral are the real guards' own architectures."""
    import torch
    from transformers import AutoModelForCausalLM, MistralConfig, Qwen3Config

    spec = spec or TinyGuardSpec()
    if architecture in ("llama", "granite"):
        return build_model(replace(spec, family=architecture), len(tokenizer), tokenizer=tokenizer)
    common: dict[str, Any] = dict(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        head_dim=spec.hidden // spec.heads,
        intermediate_size=spec.intermediate,
        max_position_embeddings=4096,
        initializer_range=spec.init_range,
        tie_word_embeddings=False,
        **{f"{k}_token_id": getattr(tokenizer, f"{k}_token_id") for k in ("bos", "eos", "pad")},
    )
    if architecture == "qwen3":
        cfg: Any = Qwen3Config(**common)
    elif architecture == "mistral":
        cfg = MistralConfig(**common, sliding_window=None)
    else:
        raise ValueError(f"unknown architecture {architecture!r}")
    torch.manual_seed(spec.seed)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").eval()


def guard_template(guard: RealGuard2, artefacts: str | Path) -> str | None:
    """The chat template `guard`'s directory ships: the real one from `artefacts`, ours from
    guard_formats (reconstructions), or None."""
    if guard.origin == "real":
        return (Path(artefacts) / guard.template).read_text(encoding="utf-8")
    if guard.origin == "none":
        return None
    return guard_formats.read_template(guard.template)


def save_real_guard_2(
    out: str | Path, name: str, artefacts: str | Path, tokenizer: Any = None
) -> tuple[Path, RealGuard2]:
    """Write the guard directory of REAL_GUARDS_2's `name`: its tokenizer (`tokenizer`, to reuse one
    conversion, else built here) saved with the guard's chat template, and a tiny random model
    (`tiny_model`). Loads with AutoTokenizer / AutoModelForCausalLM.from_pretrained."""
    guard = next((g for g in REAL_GUARDS_2 if g.name == name), None)
    if guard is None:
        raise ValueError(f"unknown guard {name!r}; known: {', '.join(g.name for g in REAL_GUARDS_2)}")
    if tokenizer is not None:
        tok = tokenizer
    elif guard.tokenizer_is_real:
        tok = real_tokenizer(guard.tokenizer, artefacts)
    else:
        tok = build_tokenizer(
            TinyGuardSpec(family="granite"), corpus=[guard_template(guard, artefacts) or ""]
        )
    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    tiny_model(guard.architecture, tok).save_pretrained(str(target))
    before = tok.chat_template
    tok.chat_template = guard_template(guard, artefacts)
    try:
        tok.save_pretrained(str(target))
    finally:
        tok.chat_template = before
    return target, guard
