"""Structural checks of decoded requests, with messages a caller can act on."""

from __future__ import annotations

from scorer_server.limits import Limits
from star_contract.errors import InvalidRequest
from star_contract.types import Conversation, CutKind, ScoreRequest

MAX_EVERY = 1_000_000


def validate_conversation(
    conv: Conversation, limits: Limits, field: str = "conversation", prompt_ok: bool = False
) -> None:
    """Roles, size and content of a conversation; it ends with the assistant response, or (`prompt_ok`,
    Judge) with the user prompt to judge."""
    if prompt_ok:
        conv.require_judgeable(field)
    else:
        conv.require_response(field)
    msgs = conv.messages
    for i, m in enumerate(msgs):
        if m.role == "system" and i != 0:
            raise InvalidRequest(f"{field}.messages[{i}]: a system message may only come first")
    turns = [m for m in msgs if m.role != "system"]
    for i in range(1, len(turns)):
        if turns[i].role == turns[i - 1].role:
            raise InvalidRequest(
                f"{field}: two {turns[i].role} messages in a row; user and assistant messages must alternate"
            )
    chars = sum(len(m.content) for m in msgs)
    if chars > limits.max_conversation_chars:
        raise InvalidRequest(
            f"{field} has {chars} characters, far over the limit of {limits.max_conversation_tokens} guard "
            "tokens; shorten it"
        )
    for i, m in enumerate(msgs):
        if "\x00" in m.content:
            raise InvalidRequest(f"{field}.messages[{i}].content contains a NUL character")


def validate_score_request(req: ScoreRequest, limits: Limits) -> None:
    validate_conversation(req.conversation, limits)
    spec = req.cuts
    n = len(req.conversation.response)
    if spec.kind is CutKind.OFFSETS:
        if len(spec.offsets) > limits.max_cuts:
            raise InvalidRequest(
                f"cuts.offsets has {len(spec.offsets)} offsets, over the limit of {limits.max_cuts}"
            )
        prev = 0
        for i, off in enumerate(spec.offsets):
            if off <= prev or off > n:
                raise InvalidRequest(
                    f"cuts.offsets[{i}] = {off} is invalid: offsets must be strictly increasing and in "
                    f"(0, {n}], the response's length in characters"
                )
            prev = off
    elif not 1 <= spec.every <= MAX_EVERY:
        raise InvalidRequest(f"cuts.every must be between 1 and {MAX_EVERY}, got {spec.every}")
    if not 1e-3 <= req.temperature <= 1e3:
        raise InvalidRequest(f"temperature must be in [0.001, 1000], got {req.temperature}")


def validate_judge(conversations: list[Conversation], limits: Limits) -> None:
    if not conversations:
        raise InvalidRequest("conversations is empty; send at least one")
    if len(conversations) > limits.max_judge_conversations:
        raise InvalidRequest(
            f"{len(conversations)} conversations in one Judge call, over the limit of "
            f"{limits.max_judge_conversations}; split the call"
        )
    for i, c in enumerate(conversations):
        validate_conversation(c, limits, f"conversations[{i}]", prompt_ok=True)
