"""Protobuf <-> dataclass conversion, the only place generated messages meet the rest of the code.

Used by the servicer and by the client library (torch-free). Decoding rejects what protobuf cannot
express as a dataclass (unknown enum values) with InvalidRequest; structural checks live in
`scorer_server.api.validation`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from star_contract.errors import InvalidRequest
from star_contract.types import (
    Convention,
    Conversation,
    CutKind,
    CutSpec,
    GuardInfo,
    Message,
    ModerateOptions,
    ModerationStop,
    ScoreRequest,
    Segment,
    StarScores,
    Verdict,
)
from star_proto import scorer_pb2 as pb

DEFAULT_EVERY = 5

_ROLE_TO_PB = {"system": pb.ROLE_SYSTEM, "user": pb.ROLE_USER, "assistant": pb.ROLE_ASSISTANT}
_ROLE_FROM_PB = {v: k for k, v in _ROLE_TO_PB.items()}
_KIND_TO_PB = {
    CutKind.WORDS: pb.CUT_KIND_WORDS,
    CutKind.GUARD_TOKENS: pb.CUT_KIND_GUARD_TOKENS,
    CutKind.OFFSETS: pb.CUT_KIND_OFFSETS,
}
_KIND_FROM_PB = {v: k for k, v in _KIND_TO_PB.items()} | {pb.CUT_KIND_UNSPECIFIED: CutKind.WORDS}
SESSION_OPEN_KEY = "star-session-open"
"""Initial-metadata key the server sends on Moderate once the session is open."""

_CONVENTION_TO_PB = {
    Convention.RAW: pb.STAR_CONVENTION_RAW,
    Convention.PUBLISHED: pb.STAR_CONVENTION_PUBLISHED,
}
_CONVENTION_FROM_PB = {v: k for k, v in _CONVENTION_TO_PB.items()} | {
    pb.STAR_CONVENTION_UNSPECIFIED: Convention.RAW
}


# -- conversations --
def conversation_to_pb(conv: Conversation) -> pb.Conversation:
    out = pb.Conversation()
    for m in conv.messages:
        if m.role not in _ROLE_TO_PB:
            raise InvalidRequest(f"unknown role {m.role!r}; roles are system, user, assistant")
        out.messages.add(role=_ROLE_TO_PB[m.role], content=m.content)
    return out


def conversation_from_pb(msg: pb.Conversation, field: str = "conversation") -> Conversation:
    messages = []
    for i, m in enumerate(msg.messages):
        role = _ROLE_FROM_PB.get(m.role)
        if role is None:
            raise InvalidRequest(
                f"{field}.messages[{i}].role is {m.role}; set ROLE_SYSTEM, ROLE_USER or ROLE_ASSISTANT"
            )
        messages.append(Message(role, m.content))
    return Conversation(tuple(messages))


# -- score requests --
def cuts_to_pb(spec: CutSpec) -> pb.CutSpec:
    if spec.kind is CutKind.OFFSETS:
        return pb.CutSpec(kind=pb.CUT_KIND_OFFSETS, offsets=list(spec.offsets))
    return pb.CutSpec(kind=_KIND_TO_PB[spec.kind], every=spec.every)


def cuts_from_pb(msg: pb.CutSpec) -> CutSpec:
    kind = _KIND_FROM_PB.get(msg.kind)
    if kind is None:
        raise InvalidRequest(
            f"cuts.kind is {msg.kind}; use CUT_KIND_WORDS, CUT_KIND_GUARD_TOKENS or CUT_KIND_OFFSETS"
        )
    if kind is CutKind.OFFSETS:
        if msg.every:
            raise InvalidRequest("cuts.every must be 0 with CUT_KIND_OFFSETS (the offsets say where to cut)")
        return CutSpec(kind=kind, every=DEFAULT_EVERY, offsets=tuple(msg.offsets))
    if msg.offsets:
        raise InvalidRequest("cuts.offsets is only allowed with CUT_KIND_OFFSETS")
    return CutSpec(kind=kind, every=msg.every or DEFAULT_EVERY)


def score_request_to_pb(req: ScoreRequest, priority: int = 0) -> pb.ScoreRequest:
    out = pb.ScoreRequest(
        conversation=conversation_to_pb(req.conversation), cuts=cuts_to_pb(req.cuts), priority=priority
    )
    if req.temperature != 1.0:
        out.temperature = req.temperature
    if req.convention is not Convention.RAW:
        out.convention = _CONVENTION_TO_PB[req.convention]
    out.safe_classes.extend(req.safe_classes)
    return out


def score_request_from_pb(msg: pb.ScoreRequest) -> tuple[ScoreRequest, int]:
    """The request and its priority."""
    temperature = msg.temperature if msg.HasField("temperature") else 1.0
    if not (math.isfinite(temperature) and temperature > 0):
        raise InvalidRequest(f"temperature must be a finite number > 0, got {temperature}")
    if msg.convention not in _CONVENTION_FROM_PB:
        raise InvalidRequest(
            f"convention is {msg.convention}; use STAR_CONVENTION_RAW or STAR_CONVENTION_PUBLISHED"
        )
    req = ScoreRequest(
        conversation_from_pb(msg.conversation),
        cuts_from_pb(msg.cuts),
        temperature,
        _CONVENTION_FROM_PB[msg.convention],
        tuple(msg.safe_classes),
    )
    return req, msg.priority


# -- score results --
def score_part_to_pb(
    segments: Iterable[Segment], part: int, parts: int, complete: bool, guard_tokens: int = 0
) -> pb.ScoreResponse:
    return pb.ScoreResponse(
        segments=[segment_to_pb(s) for s in segments],
        part=part,
        parts=parts,
        complete=complete,
        guard_tokens=guard_tokens,
    )


def segments_from_pb(msg: pb.ScoreResponse) -> list[Segment]:
    return [Segment(end=s.end, p_safe=s.p_safe) for s in msg.segments]


def scores_from_parts(parts: Iterable[pb.ScoreResponse]) -> StarScores:
    """Assemble the parts of one response into its STAR scores (segments sorted by offset)."""
    segs: list[Segment] = []
    tokens = 0
    for p in parts:
        segs.extend(segments_from_pb(p))
        tokens += p.guard_tokens
    return StarScores(tuple(sorted(segs, key=lambda s: s.end)), guard_tokens=tokens)


# -- judge --
def verdict_to_pb(v: Verdict) -> pb.Verdict:
    return pb.Verdict(p_unsafe=v.p_unsafe, categories=list(v.categories), text=v.text)


def verdict_from_pb(msg: pb.Verdict) -> Verdict:
    return Verdict(p_unsafe=msg.p_unsafe, categories=tuple(msg.categories), text=msg.text)


def judge_request_to_pb(
    conversations: Iterable[Conversation], p_unsafe_only: bool = False
) -> pb.JudgeRequest:
    return pb.JudgeRequest(
        conversations=[conversation_to_pb(c) for c in conversations], p_unsafe_only=p_unsafe_only
    )


def judge_request_from_pb(msg: pb.JudgeRequest) -> list[Conversation]:
    return [conversation_from_pb(c, f"conversations[{i}]") for i, c in enumerate(msg.conversations)]


# -- info --
def info_to_pb(info: GuardInfo, max_message_bytes: int = 0) -> pb.GetInfoResponse:
    return pb.GetInfoResponse(
        name=info.name,
        preset=info.preset,
        safe_word=info.safe_word,
        unsafe_word=info.unsafe_word,
        safe_token_id=info.safe_token_id,
        unsafe_token_id=info.unsafe_token_id,
        fingerprint=info.fingerprint,
        max_conversation_tokens=info.max_conversation_tokens,
        max_cuts=info.max_cuts,
        server_version=info.server_version,
        backend=info.backend,
        max_message_bytes=max_message_bytes,
    )


def info_from_pb(msg: pb.GetInfoResponse) -> GuardInfo:
    return GuardInfo(
        name=msg.name,
        preset=msg.preset,
        safe_word=msg.safe_word,
        unsafe_word=msg.unsafe_word,
        safe_token_id=msg.safe_token_id,
        unsafe_token_id=msg.unsafe_token_id,
        fingerprint=msg.fingerprint,
        max_conversation_tokens=msg.max_conversation_tokens,
        max_cuts=msg.max_cuts,
        server_version=msg.server_version,
        backend=msg.backend,
    )


def segment_to_pb(segment: Segment) -> pb.Segment:
    return pb.Segment(end=segment.end, p_safe=segment.p_safe)


# -- live moderation --
def moderate_open_from_pb(msg: pb.ModerateOpen) -> tuple[Conversation, ModerateOptions]:
    """The conversation so far and the session's options (zero / unset fields take the defaults)."""
    d = ModerateOptions()
    options = ModerateOptions(
        every=msg.every or d.every,
        unsafe_below=msg.unsafe_below if msg.HasField("unsafe_below") else d.unsafe_below,
        consecutive=msg.consecutive or d.consecutive,
        temperature=msg.temperature if msg.HasField("temperature") else d.temperature,
        kind=_KIND_FROM_PB.get(msg.cut_kind, CutKind.OFFSETS),
        convention=_CONVENTION_FROM_PB.get(msg.convention, Convention.RAW),
        safe_classes=tuple(msg.safe_classes),
    )
    if msg.convention not in _CONVENTION_FROM_PB:
        raise InvalidRequest(
            f"open.convention is {msg.convention}; use STAR_CONVENTION_RAW or STAR_CONVENTION_PUBLISHED"
        )
    if options.kind is CutKind.OFFSETS:
        raise InvalidRequest(
            f"open.cut_kind is {msg.cut_kind}; live moderation cuts every M words (CUT_KIND_WORDS) or "
            "N guard tokens (CUT_KIND_GUARD_TOKENS)"
        )
    if not 0.0 <= options.unsafe_below <= 1.0:
        raise InvalidRequest(f"open.unsafe_below must be in [0, 1], got {options.unsafe_below}")
    if not (math.isfinite(options.temperature) and 1e-3 <= options.temperature <= 1e3):
        raise InvalidRequest(f"open.temperature must be in [0.001, 1000], got {options.temperature}")
    return conversation_from_pb(msg.conversation), options


def moderate_open_to_pb(conversation: Conversation, options: ModerateOptions) -> pb.ModerateOpen:
    out = pb.ModerateOpen(
        conversation=conversation_to_pb(conversation),
        every=options.every,
        unsafe_below=options.unsafe_below,
        consecutive=options.consecutive,
        cut_kind=_KIND_TO_PB[options.kind],
        convention=_CONVENTION_TO_PB[options.convention],
        safe_classes=list(options.safe_classes),
    )
    if options.temperature != 1.0:
        out.temperature = options.temperature
    return out


def stop_to_pb(stop: ModerationStop) -> pb.ModerateStop:
    return pb.ModerateStop(offset=stop.offset, cut=stop.cut, p_safe=stop.p_safe)


def stop_from_pb(msg: pb.ModerateStop) -> ModerationStop:
    return ModerationStop(offset=msg.offset, cut=msg.cut, p_safe=msg.p_safe)
