"""Incremental STAR on a response while it is being generated: one session, exact at every cut.

The guard's keys and values for the stable part of the prompt (template head, the conversation, the
response so far, up to the last token that later text can no longer change) are kept between deltas.
Each new cut costs its new trunk tokens plus its tail (the template suffix and the few response tokens
after the stable point), not the whole prefix. Exactness does not depend on the tokenizer: every cut's
input is the per-cut definition `tokenize(render(conversation, response[:c]))`, and the cache is
rolled back to the longest prefix it shares with that input before anything is computed, so a delta
that changes how the last tokens merge (BPE across the boundary, a trimming template) recomputes from
the last stable token.

Cuts follow `plan_cuts` on the final response exactly: a cut after every M-th word is emitted once the
next word begins (a response that ends there gets its cut at its end instead), and closing the session
emits the final cut at the response's end.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from scorer_server.engine.cuts import plan_cuts
from scorer_server.engine.engine import StarEngine
from scorer_server.engine.forward import sliding_window_of
from scorer_server.engine.plan import common_prefix
from scorer_server.engine.session_kv import KVState, TailJob, forward_tails
from scorer_server.guards.verdict import p_safe
from star_contract.errors import InvalidRequest
from star_contract.types import Conversation, CutKind, CutSpec, Segment


@dataclass(frozen=True)
class CutInput:
    """One cut a delta completed, tokenised: what the guard must compute for it."""

    end: int
    """Character offset of the cut in the response."""
    ids: list[int]
    """The per-cut prompt: tokenize(render(conversation, response[:end]))."""
    stable: int
    """Leading tokens shared with the response so far (later cuts start from them); < len(ids)."""


@dataclass
class IncrementalSession:
    """STAR scores of a response arriving in deltas of any size (down to single characters).

    `push` and `close` do everything in the calling thread; a server splits each into `plan_push` /
    `plan_close` (tokenisation) and `forward_tails` over many sessions' `jobs` (see backends/moderation).
    """

    engine: StarEngine
    conversation: Conversation
    """The conversation so far, ending with the assistant message being generated (usually empty)."""
    cuts: CutSpec = field(default_factory=CutSpec)
    temperature: float = 1.0
    state: KVState = field(default_factory=KVState)
    """The guard's keys and values for the stable trunk (evictable: the next cut then recomputes)."""

    def __post_init__(self) -> None:
        self.conversation.require_response()
        if self.cuts.kind is not CutKind.WORDS:
            raise InvalidRequest("incremental scoring cuts every M words; use CUT_KIND_WORDS")
        self.text = self.conversation.response
        self.closed = False
        self.cuts_scored = 0
        self._planned = -1
        self._window = sliding_window_of(self.engine.guard.model)[0]

    def push(self, delta: str) -> list[Segment]:
        """Append `delta` to the response; the scores of the cuts it completes."""
        return self.run(self.plan_push(delta))

    def close(self) -> list[Segment]:
        """The response is complete: the score of its final cut (its end)."""
        return self.run(self.plan_close())

    def plan_push(self, delta: str) -> list[CutInput]:
        """Append `delta`; the tokenised cuts it completes (to run in order, once each)."""
        if self.closed:
            raise InvalidRequest("the session is closed")
        self.text += delta
        return self._inputs([c for c in self._ready_cuts() if c > self._planned])

    def plan_close(self) -> list[CutInput]:
        """Close the response; its final cut, unless a pushed cut already ended there."""
        if self.closed:
            raise InvalidRequest("the session is closed")
        self.closed = True
        n = len(self.text)
        return self._inputs([n] if self._planned < n else [])

    def jobs(self, inputs: list[CutInput]) -> list[TailJob]:
        return [TailJob(self.state, inp.ids, inp.stable) for inp in inputs]

    def segment(self, inp: CutInput, logit_diff: float) -> Segment:
        """The cut's STAR segment from its verdict logit difference."""
        self.cuts_scored += 1
        return Segment(end=inp.end, p_safe=p_safe(logit_diff, self.temperature))

    def run(self, inputs: list[CutInput]) -> list[Segment]:
        """Score `inputs` one forward each, in this thread."""
        g = self.engine.guard
        return [
            self.segment(i, forward_tails(g, [job], self.engine.pad_id)[0])
            for i, job in zip(inputs, self.jobs(inputs), strict=True)
        ]

    def _ready_cuts(self) -> list[int]:
        """Cuts that later text can no longer move: all of `plan_cuts`'s but the last (the response's
        current end), i.e. every M-th word's end once another word has begun."""
        return plan_cuts(self.text, self.cuts)[:-1]

    def _inputs(self, cuts: list[int]) -> list[CutInput]:
        if not cuts:
            return []
        g = self.engine.guard
        now = g.encode([g.template.render(self.conversation.with_response(self.text))])[0]
        self.engine.config.limits.check_tokens(len(now))
        if self._window is not None and len(now) >= self._window:
            raise InvalidRequest(
                f"the guard prompt has reached {len(now)} tokens, the guard's attention window "
                f"({self._window}); live moderation on this guard covers prompts below it"
            )
        out: list[CutInput] = []
        for c in cuts:
            ids = g.encode([g.template.render(self.conversation.with_response(self.text[:c]))])[0]
            # Tokens this cut shares with the response so far stay valid for later cuts; at least the
            # last token is left to the tail, whose final hidden state is the verdict position.
            out.append(CutInput(c, ids, min(common_prefix(ids, now), len(ids) - 1)))
            self._planned = c
        return out

    @property
    def cache_tokens(self) -> int:
        """Guard tokens whose keys and values the session holds."""
        return len(self.state.ids)
