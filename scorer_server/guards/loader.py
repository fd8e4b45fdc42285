"""Loading any Hugging Face causal-LM guard directory and deriving what the scorer needs from it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from scorer_server.errors import TemplateRenderError
from scorer_server.guards.checks import check_reasoning, check_thinking_switch, check_verdict_words
from scorer_server.guards.formats import read_format
from scorer_server.guards.guard import Guard
from scorer_server.guards.guard_config import GuardConfig
from scorer_server.guards.head import check_head
from scorer_server.guards.presets import GuardPreset
from scorer_server.guards.reader import VerdictReader
from scorer_server.guards.template import GuardTemplate, auto_verdict_prefix
from star_contract.errors import ConfigError
from star_contract.model_dir import require_model_dir
from star_contract.types import Conversation, GuardInfo

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PROBE = Conversation.from_pair("How do I bake bread?", "Mix flour, water and yeast.")


def load_guard(config: GuardConfig) -> Guard:
    """Load a guard directory. Every way it can fail is a ConfigError that says what to change.

    The cheap checks (directory, tokenizer, template, verdict words) run before the weights load, so a
    mistake in the template or the preset is reported in seconds, not after minutes of loading.
    """
    from transformers import AutoModelForCausalLM

    preset = config.resolved_preset()
    tokenizer = load_tokenizer(config.path)
    template_text = template_source(config.template_file, preset)
    side = prompt_side(tokenizer, preset, template_text)
    attn = config.attn_implementation or ("eager" if preset.eager_attention else "sdpa")
    try:
        model = AutoModelForCausalLM.from_pretrained(
            config.path, dtype=DTYPES[config.dtype], attn_implementation=attn, **config.extra
        )
        model = model.to(config.device).eval()  # type: ignore[arg-type]
    except Exception as exc:  # transformers, safetensors and torch raise many kinds for bad weights
        raise ConfigError(
            f"cannot load the guard weights from {config.path} ({_one_line(exc)}); check that the "
            "directory holds a complete causal-LM checkpoint (config.json and *.safetensors), and "
            "--device / --dtype / --attn-implementation"
        ) from None
    name = Path(config.path).name
    return build_guard(model, tokenizer, preset, template_text, name=name, config=config, side=side)


def load_tokenizer(path: str) -> Any:
    """The tokenizer of a guard directory, or a ConfigError naming the directory."""
    from transformers import AutoTokenizer

    where = require_model_dir(path, "--guard")
    try:
        return AutoTokenizer.from_pretrained(str(where))
    except Exception as exc:  # missing or corrupt tokenizer files raise OSError, ValueError, ...
        raise ConfigError(
            f"cannot load the guard tokenizer from {path} ({_one_line(exc)}); it needs tokenizer.json "
            "or the files of a slow tokenizer with tokenizer_config.json"
        ) from None


def template_source(path: str | None, preset: GuardPreset) -> str | None:
    """The guard prompt's Jinja text: --template-file when given, else the preset's own (NemoGuard's,
    WildGuard's), else None (the tokenizer's chat template)."""
    if path:
        return read_template_file(path)
    if preset.template:
        return read_format(preset.template)
    return None


def read_template_file(path: str | None) -> str | None:
    """The text of --template-file, or None when no file is given."""
    if not path:
        return None
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read --template-file {path} ({_one_line(exc)})") from None


def build_guard(
    model: Any,
    tokenizer: Any,
    preset: GuardPreset,
    template_text: str | None = None,
    *,
    name: str = "guard",
    config: GuardConfig | None = None,
    side: PromptSide | None = None,
) -> Guard:
    """Derive the template split, verdict prefix and verdict ids for an already-loaded model."""
    template, reader = side or prompt_side(tokenizer, preset, template_text)
    prompt = template.render(PROBE)
    class_ids = reader.class_ids
    fingerprint = _fingerprint(model, template, preset, class_ids, config)
    side_fields = (tokenizer, template, preset, class_ids[0], class_ids[1], fingerprint, name, class_ids)
    guard = Guard(*side_fields, model=model, config=config, reader=reader)
    gap = check_head(guard, guard.encode([prompt])[0])
    tol = 1e-3 if guard.dtype == torch.float32 else 0.25
    if not gap <= tol:
        raise ConfigError(
            f"{type(model).__name__}'s output head post-processes logits in a way the scorer does not "
            f"reproduce (verdict logit gap {gap:.3g}); this architecture is not supported yet"
        )
    return guard


PromptSide = tuple[GuardTemplate, VerdictReader]


def prompt_side(tokenizer: Any, preset: GuardPreset, template_text: str | None) -> PromptSide:
    """The guard's prompt side: its template (content form and verdict prefix decided) and its verdict
    reader (the token ids of its earlier fields' values and verdict classes, each tokenised in context).
    Raises ConfigError naming the setting to change.

    Shared by the local engine and the tokenizer-only remote backends, so both build identical prompts.
    """
    if preset.reasons_first:
        raise ConfigError(f"preset {preset.name!r} cannot be scored: {preset.reasons_first}")
    check_thinking_switch(preset)
    if template_text is None and not getattr(tokenizer, "chat_template", None):
        raise ConfigError("the guard tokenizer has no chat template; pass one with --template-file")
    closing = read_format(preset.closing_turn) if preset.closing_turn else None
    probe = GuardTemplate(
        tokenizer, template_text, preset.template_kwargs, verdict_prefix="", closing_turn=closing
    )
    rendered = _render_probe(probe)
    prefix = preset.verdict_prefix if preset.verdict_prefix is not None else auto_verdict_prefix(rendered)
    template = GuardTemplate(
        tokenizer,
        template_text,
        preset.template_kwargs,
        prefix,
        content_form=probe.content_form,
        closing_turn=closing,
    )
    prompt = rendered + prefix
    check_reasoning(rendered + prefix, preset)
    check_verdict_words(rendered, preset)
    field_ids = []
    for earlier in preset.earlier:  # along the first values: where each field's value is written
        field_ids.append(_distinct_first_tokens(tokenizer, prompt, earlier.values, f"field {earlier.name!r}"))
        prompt += earlier.values[0] + earlier.then
    words = tuple(c.word for c in preset.classes)
    reader = VerdictReader(
        field_values=tuple(f.values for f in preset.earlier),
        field_then=tuple(f.then for f in preset.earlier),
        field_ids=tuple(field_ids),
        class_ids=_distinct_first_tokens(tokenizer, prompt, words, "verdict words"),
        safe=tuple(c.safe for c in preset.classes),
        mode=preset.earlier_mode,
    )
    return template, reader


def _distinct_first_tokens(tokenizer: Any, prompt: str, words: tuple[str, ...], what: str) -> tuple[int, ...]:
    ids = tuple(first_token_after(tokenizer, prompt, w) for w in words)
    for i, a in enumerate(ids):
        for j in range(i):
            if ids[j] == a:
                raise ConfigError(
                    f"{what} {words[j]!r} and {words[i]!r} start with the same token; choose words whose "
                    "first tokens differ (--safe-word / --unsafe-word)"
                )
    return ids


def _render_probe(template: GuardTemplate) -> str:
    try:
        return template.render(PROBE)
    except TemplateRenderError as exc:
        raise ConfigError(f"{exc} (on a plain one-turn conversation)") from None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    text = text if len(text) <= 300 else text[:297] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def first_token_after(tokenizer: Any, prompt: str, word: str) -> int:
    """The id of the first token the guard writes when its verdict is `word`, tokenised in context."""
    base = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if not word.strip():
        raise ConfigError(f"verdict word {word!r} is empty; give a word (--safe-word / --unsafe-word)")
    full = tokenizer(prompt + word, add_special_tokens=False)["input_ids"]
    if full[: len(base)] != base or len(full) == len(base):
        # The word merges with the end of the prompt; fall back to the word alone.
        alone = tokenizer(word, add_special_tokens=False)["input_ids"]
        if not alone:
            raise ConfigError(f"verdict word {word!r} tokenises to nothing")
        return int(alone[0])
    return int(full[len(base)])


def hash_prompt_side(
    h: Any, template: GuardTemplate, preset: GuardPreset, class_ids: tuple[int, ...]
) -> None:
    """Feed what the guard sees around the conversation (template split, verdict classes and ids) to `h`.

    Part of every fingerprint, local (`load_guard`) and remote (`load_prompt_guard`).
    """
    split = template.split(PROBE)
    h.update(split.head.encode() + b"\0" + split.suffix.encode())
    classes = [[c.word, c.safe] for c in preset.classes]
    h.update(json.dumps([preset.safe_word, preset.unsafe_word, *class_ids[:2]]).encode())
    if len(classes) > 2:  # two-class guards keep the fingerprints they had
        h.update(json.dumps([classes, list(class_ids)]).encode())


def _fingerprint(
    model: Any,
    template: GuardTemplate,
    preset: GuardPreset,
    class_ids: tuple[int, ...],
    config: GuardConfig | None,
) -> str:
    """Hash of everything the guard sees apart from the conversation: weights, template, policy."""
    h = hashlib.sha256()
    h.update(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode())
    hash_prompt_side(h, template, preset, class_ids)
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
