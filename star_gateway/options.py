"""Per-request moderation options: the `star_moderation` field of a request body, merged over the
deployment's settings. The field is always removed before the body goes upstream.

    {"model": ..., "messages": [...], "star_moderation": {"every": 3, "hold_back_words": 2}}

Keys: `enabled` (bool), `every` (int), `cut` ("words" | "guard_tokens"), `unsafe_below` (float),
`consecutive` (int), `hold_back_words` (int, -1 unbounded), `input` (bool: judge the last user message).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from star_contract.types import CutKind, ModerateOptions
from star_gateway.config import UNBOUNDED, GatewayConfig
from star_gateway.errors import bad_request

FIELD = "star_moderation"
"""The body's extension field (request) and the answer's (where moderation acted)."""


@dataclass(frozen=True)
class RequestOptions:
    """What moderating one request means."""

    enabled: bool
    moderate: ModerateOptions
    hold_back_words: int
    input: bool

    @staticmethod
    def defaults(config: GatewayConfig) -> RequestOptions:
        return RequestOptions(
            True, config.moderate_options(), config.hold_back_words, config.input_moderation
        )


_TYPES: dict[str, tuple[type, ...]] = {
    "enabled": (bool,),
    "every": (int,),
    "cut": (str,),
    "unsafe_below": (int, float),
    "consecutive": (int,),
    "hold_back_words": (int,),
    "input": (bool,),
}


def take_options(body: dict[str, Any], config: GatewayConfig) -> RequestOptions:
    """Remove `star_moderation` from `body` and return the options for this request (400 on a bad
    field; ignored when the deployment does not allow request overrides)."""
    raw = body.pop(FIELD, None)
    options = RequestOptions.defaults(config)
    if raw is None or not config.request_overrides:
        return options
    if not isinstance(raw, dict):
        raise bad_request(f"{FIELD} must be an object", FIELD)
    for key, value in raw.items():
        kinds = _TYPES.get(key)
        if kinds is None:
            raise bad_request(f"{FIELD}.{key} is not an option; options are {', '.join(_TYPES)}", FIELD)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise bad_request(f"{FIELD}.{key} has the wrong type ({type(value).__name__})", FIELD)
    mod = options.moderate
    try:
        mod = replace(
            mod,
            every=int(raw.get("every", mod.every)),
            kind=CutKind(raw.get("cut", mod.kind.value)),
            unsafe_below=float(raw.get("unsafe_below", mod.unsafe_below)),
            consecutive=int(raw.get("consecutive", mod.consecutive)),
        )
    except ValueError:
        raise bad_request(f"{FIELD}.cut must be words or guard_tokens", FIELD) from None
    hold = int(raw.get("hold_back_words", options.hold_back_words))
    if mod.every < 1 or mod.consecutive < 1 or not 0.0 <= mod.unsafe_below <= 1.0 or hold < UNBOUNDED:
        raise bad_request(
            f"{FIELD}: every and consecutive must be >= 1, unsafe_below in [0, 1], hold_back_words >= -1",
            FIELD,
        )
    return RequestOptions(bool(raw.get("enabled", True)), mod, hold, bool(raw.get("input", options.input)))
