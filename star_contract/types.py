"""Plain data types shared by the engine, the server and the clients.

Protobuf stays at the edge: the gRPC servicer converts messages to these dataclasses and back in one
place, and nothing below it imports generated code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Message:
    """One chat turn."""

    role: str
    content: str


@dataclass(frozen=True)
class Conversation:
    """A conversation whose last message is the assistant response being judged (for Judge it may
    instead end with a user message: then the prompt is judged, as a guard moderates input)."""

    messages: tuple[Message, ...]

    @property
    def is_prompt(self) -> bool:
        """Whether the conversation ends with a user message (a prompt to judge, not a response)."""
        return bool(self.messages) and self.messages[-1].role == "user"

    @property
    def response(self) -> str:
        return self.messages[-1].content

    @property
    def context(self) -> tuple[Message, ...]:
        return self.messages[:-1]

    @staticmethod
    def from_pair(prompt: str, response: str) -> Conversation:
        return Conversation((Message("user", prompt), Message("assistant", response)))

    @staticmethod
    def from_dicts(messages: list[dict[str, str]]) -> Conversation:
        return Conversation(tuple(Message(m["role"], m["content"]) for m in messages))

    def to_dicts(self) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.content} for m in self.messages]

    def with_response(self, response: str) -> Conversation:
        """The same conversation with another text as its last (assistant) message."""
        return Conversation((*self.messages[:-1], Message(self.messages[-1].role, response)))

    def require_response(self, field: str = "conversation") -> None:
        """Raise InvalidRequest unless the last message is the assistant response to judge: the one
        check both the API's validation and in-process preparation rely on."""
        from star_contract.errors import InvalidRequest

        if not self.messages:
            raise InvalidRequest(f"{field}.messages is empty; send at least the assistant response to score")
        if self.messages[-1].role != "assistant":
            raise InvalidRequest(f"{field}: the last message must be the assistant response (ROLE_ASSISTANT)")

    def require_judgeable(self, field: str = "conversation") -> None:
        """Raise InvalidRequest unless the last message is an assistant response or a user prompt."""
        from star_contract.errors import InvalidRequest

        if not self.is_prompt:
            self.require_response(field)
        elif not self.messages[-1].content.strip():
            raise InvalidRequest(f"{field}: the last user message, the prompt to judge, is empty")


class CutKind(StrEnum):
    """How the response is cut into scored stretches."""

    WORDS = "words"
    """A cut after every M whitespace-separated words (the published setup, M = 5)."""
    GUARD_TOKENS = "guard_tokens"
    """A cut after every N tokens of the guard's own tokenisation of the response."""
    OFFSETS = "offsets"
    """Explicit character offsets chosen by the caller (the trainer aligns them to its tokenizer)."""


class Convention(StrEnum):
    """How P(safe) is read from the guard at a cut."""

    RAW = "raw"
    """The paper's formula: a two-way softmax of the raw verdict logits (optionally over a temperature)."""
    PUBLISHED = "published"
    """The authors' released code: the guard sees the response's words joined by single spaces, and
    P(safe) is a two-way softmax of generate()'s processed scores (repetition penalty 1.2, temperature
    0.2, top-k 50, top-p 0.9). Word cuts only; see docs/fidelity.md."""


@dataclass(frozen=True)
class CutSpec:
    """Where to cut a response. The full response is always the last cut."""

    kind: CutKind = CutKind.WORDS
    every: int = 5
    """M for WORDS, N for GUARD_TOKENS; ignored for OFFSETS."""
    offsets: tuple[int, ...] = ()
    """Strictly increasing character offsets in (0, len(response)] for OFFSETS."""

    def key(self) -> str:
        """A stable text form, used in cache keys."""
        if self.kind is CutKind.OFFSETS:
            return "offsets:" + ",".join(map(str, self.offsets))
        return f"{self.kind.value}:{self.every}"


@dataclass(frozen=True)
class Segment:
    """The STAR score of the response prefix ending at character offset `end`."""

    end: int
    p_safe: float


@dataclass(frozen=True)
class StarScores:
    """STAR trajectory of one response: one segment per cut, in increasing `end` order."""

    segments: tuple[Segment, ...]
    guard_tokens: int = 0
    """Guard tokens this response cost (for metrics and accounting)."""

    def weights_for_spans(self, ends: list[int]) -> list[float]:
        """STAR weight for each character position `end` (a token's end): the score of its chunk."""
        out: list[float] = []
        j = 0
        for e in ends:
            while j < len(self.segments) - 1 and self.segments[j].end < e:
                j += 1
            out.append(self.segments[j].p_safe if self.segments else 1.0)
        return out


@dataclass(frozen=True)
class Verdict:
    """Whole-response judgement."""

    p_unsafe: float
    categories: tuple[str, ...] = ()
    text: str = ""
    """The guard's decoded verdict line(s), when generated."""

    @property
    def unsafe(self) -> bool:
        return self.p_unsafe >= 0.5


@dataclass(frozen=True)
class ScoreRequest:
    """One unit of work for the engine."""

    conversation: Conversation
    cuts: CutSpec = field(default_factory=CutSpec)
    temperature: float = 1.0
    convention: Convention = Convention.RAW
    safe_classes: tuple[str, ...] = ()
    """Verdict classes that also count as safe for this request (Qwen3Guard's "Controversial" read
    loose); empty: the server's reading."""


@dataclass(frozen=True)
class ModerateOptions:
    """How a live-moderation session cuts and when it stops the stream."""

    every: int = 5
    """A cut after every `every` words (or guard tokens, with `kind`)."""
    unsafe_below: float = 0.5
    """A cut is unsafe when its P(safe) is below this."""
    consecutive: int = 1
    """How many unsafe cuts in a row stop the stream."""
    temperature: float = 1.0
    kind: CutKind = CutKind.WORDS
    """WORDS or GUARD_TOKENS (explicit offsets need the whole response)."""
    convention: Convention = Convention.RAW
    """How P(safe) is read (PUBLISHED: words cuts and the default temperature only)."""
    safe_classes: tuple[str, ...] = ()
    """As ScoreRequest.safe_classes."""

    def cuts(self) -> CutSpec:
        """The session's cut spacing."""
        return CutSpec(self.kind, self.every)


@dataclass(frozen=True)
class ModerationStop:
    """A live-moderation session's stop: the unsafe stretch begins at `offset`; the rule fired at the
    cut ending at `cut`, whose P(safe) was `p_safe`."""

    offset: int
    cut: int
    p_safe: float


@dataclass(frozen=True)
class GuardInfo:
    """What a scorer serves; `fingerprint` covers everything the guard sees apart from the conversation
    (weights, template, policy, verdict tokens), so clients put it in their cache keys."""

    name: str
    preset: str
    safe_word: str
    unsafe_word: str
    safe_token_id: int
    unsafe_token_id: int
    fingerprint: str
    max_conversation_tokens: int = 8192
    max_cuts: int = 512
    server_version: str = ""
    backend: str = "local"
