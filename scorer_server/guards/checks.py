"""Load-time checks that a preset fits the guard's rendered prompt: the verdict words the prompt asks for,
no open reasoning block before the verdict, no reasoning mode switched on."""

from __future__ import annotations

import re

from scorer_server.guards.presets import GuardPreset
from star_contract.errors import ConfigError

REASONING_OPENERS = ("<think>", "<|channel|>analysis")
"""Where a prompt ending in one of these opens a reasoning trace the guard fills before its verdict."""


def check_reasoning(prompt: str, preset: GuardPreset) -> None:
    """Refuse a guard whose rendered prompt leaves it reasoning before its verdict: a reasoning block
    opened and not closed (a template in thinking mode) means the verdict is not the next thing the
    guard writes, and a number read there would be read where the guard writes no verdict."""
    tail = prompt.rstrip()
    for opener in REASONING_OPENERS:
        at = tail.rfind(opener)
        close = "</think>" if opener == "<think>" else "<|end|>"
        if at >= 0 and close not in tail[at:]:
            raise ConfigError(
                f"the guard prompt ends inside an open reasoning block ({opener!r} without {close!r}): the "
                "guard reasons before its verdict, so no verdict can be read per cut. Render the "
                "template in its non-reasoning mode (e.g. --template-kwargs "
                "'{\"enable_thinking\": false}' or '{\"think\": false}'), or use a guard that answers first"
            )


def check_thinking_switch(preset: GuardPreset) -> None:
    """Refuse a family rendered in its reasoning mode (Granite Guardian with think on): it writes a trace
    before its score, so the preset's forced text would put an empty trace where a real one belongs."""
    switch = preset.thinking_switch
    if switch and preset.template_kwargs.get(switch):
        raise ConfigError(
            f"preset {preset.name!r} with {switch!r} on reasons before its score, so no score can be read "
            f'per cut; use its no-think mode (--template-kwargs with "{switch}": false, the preset\'s '
            "default)"
        )


def check_verdict_words(rendered: str, preset: GuardPreset) -> None:
    """A preset's verdict words must be the ones the guard's own instructions ask for.

    Every published guard prompt names its answers ('safe' or 'unsafe'; 'Yes' or 'No'); a preset whose
    words the prompt never mentions is the wrong preset, and its scores would be noise. `custom`
    guards are not checked.
    """
    if preset.name == "custom" or not preset.verdict_words_in_prompt:
        return
    missing = [c.word for c in preset.classes if not _mentions(rendered, c.word.strip())]
    if not missing:
        return
    hint = ""
    for name, words in (("llama-guard-3", ("safe", "unsafe")), ("granite-guardian-3", ("Yes", "No"))):
        if name != preset.name and all(f"'{w}'" in rendered for w in words):
            hint = f" It asks for {words[0]!r} or {words[1]!r}: try --preset {name}"
            hint += " (or shieldgemma)." if name == "granite-guardian-3" else "."
    raise ConfigError(
        f"the guard's prompt never mentions the verdict word(s) {', '.join(map(repr, missing))} of "
        f"preset {preset.name!r}, so this is probably the wrong preset for this guard.{hint} For a guard "
        "with other answers use --preset custom with --safe-word and --unsafe-word"
    )


def _mentions(text: str, word: str) -> bool:
    """Whether `word` occurs in `text` as a word of its own ('safe' is not in 'unsafe', 'No' not in 'Non')."""
    return re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text) is not None
