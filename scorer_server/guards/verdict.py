"""Reading a guard's answer: STAR probability from the verdict logit gap, categories from its text.

One reader for every backend, so the local engine and a remote engine name the same categories for
the same verdict.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence

from scorer_server.guards.presets import GuardPreset
from star_contract.errors import InvalidRequest
from star_contract.types import Verdict


def p_safe(diff: float, temperature: float = 1.0) -> float:
    """sigmoid((logit_safe - logit_unsafe) / T), computed without overflow."""
    z = diff / temperature
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def classes_p_safe(logits: Sequence[float], safe: Sequence[bool], temperature: float = 1.0) -> float:
    """P(safe) from the verdict classes' logits (or log-probs: a shared normaliser cancels): the softmax
    at `temperature` over the classes, summed over those that count as safe. Two classes give
    sigmoid((safe - unsafe) / T)."""
    if len(logits) == 2 and safe[0] and not safe[1]:
        return p_safe(logits[0] - logits[1], temperature)
    top = max(logits)
    weights = [math.exp((x - top) / temperature) for x in logits]
    return sum(w for w, s in zip(weights, safe, strict=True) if s) / sum(weights)


@functools.lru_cache(maxsize=32)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def parse_categories(text: str, pattern: re.Pattern[str] | None) -> tuple[str, ...]:
    """Violated categories named in a decoded verdict, in order of first mention, without repeats.

    Only the text after the verdict line is searched, so a category-like token in the verdict word
    itself never counts."""
    if pattern is None:
        return ()
    rest = text.strip().split("\n", 1)
    return tuple(dict.fromkeys(pattern.findall(rest[1]))) if len(rest) == 2 else ()


def safe_mask(preset: GuardPreset, also_safe: Sequence[str]) -> tuple[bool, ...]:
    """Per verdict class of `preset`, whether it counts as safe with the classes named in `also_safe`
    (a request's safe_classes, words compared stripped) counted safe too; InvalidRequest names the
    guard's classes when a name is not one of them."""
    classes = preset.classes
    wanted = {w.strip() for w in also_safe}
    known = {c.word.strip() for c in classes}
    if not wanted <= known:
        raise InvalidRequest(
            f"safe_classes names {', '.join(sorted(wanted - known))}, not a verdict class of this guard "
            f"({', '.join(sorted(known))})"
        )
    return tuple(c.safe or c.word.strip() in wanted for c in classes)


def read_verdict(p_safe: float, text: str, preset: GuardPreset) -> Verdict:
    """The Verdict for P(safe) = `p_safe` of the whole response and the guard's decoded answer `text`
    (categories only for an unsafe verdict, read as `parse_categories` says)."""
    p_unsafe = 1.0 - p_safe
    pattern = _compiled(preset.category_pattern) if preset.category_pattern else None
    cats = parse_categories(text, pattern) if p_unsafe >= 0.5 else ()
    return Verdict(p_unsafe=p_unsafe, categories=cats, text=text.strip())
