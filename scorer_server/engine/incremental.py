"""Incremental STAR on a response while it is being generated: one session, exact at every cut.

The guard's keys and values for the stable part of the prompt (template head, the conversation, the
response so far, up to the last token that later text can no longer change) are kept between deltas.
Each new cut costs its new trunk tokens plus its tail (the template suffix and the few response tokens
after the stable point), not the whole prefix. Exactness does not depend on the tokenizer: every cut's
input is the per-cut definition `tokenize(render(conversation, response[:c]))`, and the cache is
rolled back to the longest prefix it shares with that input before anything is computed, so a delta
that changes how the last tokens merge (BPE across the boundary, a trimming template) recomputes from
the last stable token.

Tokenisation is incremental too (`IncrementalTokenizer`): each cut's prompt is tokenised from an anchor
near the end of what it shares with the previous cut's, so a cut's cost does not grow with the
response; the tokens are exactly a whole tokenisation's (see incremental_tokens.py for the argument
and its checks, and for the tokenizers that are always tokenised whole).

Cuts follow `plan_cuts` on the final response exactly. A cut after every M-th word is emitted once the
next word begins; a cut after every N-th guard token once later text can no longer change that token
(it ends `margin` characters before the response's current end and another token follows). Closing the
session emits the cuts still due, the last at the response's end.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from scorer_server.engine.cuts import plan_cuts
from scorer_server.engine.engine import StarEngine
from scorer_server.engine.forward import sliding_window_of
from scorer_server.engine.incremental_tokens import IncrementalTokenizer
from scorer_server.engine.plan import common_prefix
from scorer_server.engine.prepare import check_published, published_text
from scorer_server.engine.session_kv import KVState, TailJob, forward_tails_hidden
from scorer_server.guards.head import full_logits, verdict_logit_diff
from scorer_server.guards.published import processed_p_safe
from scorer_server.guards.verdict import p_safe
from star_contract.errors import InvalidRequest
from star_contract.types import Convention, Conversation, CutKind, CutSpec, Segment

TAIL_TOKENS_PER_FORWARD = 1024
"""The most tail tokens (template suffixes, mostly) one forward computes for one session's cuts: the
cuts a push completes share a forward up to this, so a burst of text costs a few forwards, not one
per cut, and the attention mask (quadratic in the row's length) stays small."""


@dataclass(frozen=True)
class CutInput:
    """One cut a delta completed, tokenised: what the guard must compute for it."""

    end: int
    """Character offset of the cut in the response."""
    ids: list[int]
    """The per-cut prompt: tokenize(render(conversation, response[:end]))."""
    stable: int
    """Leading tokens shared with the response so far (later cuts start from them); < len(ids)."""


def forward_groups(inputs: list[CutInput]) -> list[list[CutInput]]:
    """`inputs` in order, split into groups that each fit one forward (TAIL_TOKENS_PER_FORWARD)."""
    groups: list[list[CutInput]] = []
    size = 0
    for inp in inputs:
        tail = len(inp.ids) - inp.stable
        if groups and size + tail <= TAIL_TOKENS_PER_FORWARD:
            groups[-1].append(inp)
            size += tail
        else:
            groups.append([inp])
            size = tail
    return groups


@dataclass
class IncrementalSession:
    """STAR scores of a response arriving in deltas of any size (down to single characters).

    `push` and `close` do everything in the calling thread; a server splits each into `plan_push` /
    `plan_close` (tokenisation) and `forward_tails_hidden` over many sessions' `jobs` (see
    backends/moderation).
    """

    engine: StarEngine
    conversation: Conversation
    """The conversation so far, ending with the assistant message being generated (usually empty)."""
    cuts: CutSpec = field(default_factory=CutSpec)
    temperature: float = 1.0
    convention: Convention = Convention.RAW
    """RAW, or PUBLISHED: the guard sees the response's words joined by single spaces, and P(safe) is
    read from generate()'s processed scores (see guards/published.py)."""
    state: KVState = field(default_factory=KVState)
    """The guard's keys and values for the stable trunk (evictable: the next cut then recomputes)."""

    def __post_init__(self) -> None:
        self.conversation.require_response()
        if self.cuts.kind is CutKind.OFFSETS:
            raise InvalidRequest(
                "live moderation cuts every M words or N guard tokens; explicit offsets need the "
                "whole response (use Score)"
            )
        if self.cuts.every < 1:
            raise InvalidRequest(f"cut spacing must be >= 1, got {self.cuts.every}")
        if self.convention is Convention.PUBLISHED:
            check_published(self.cuts.kind, self.temperature)
        self.text = self.conversation.response
        self.closed = False
        self.cuts_scored = 0
        self.cuts_planned = 0
        self._planned = -1
        self._window = sliding_window_of(self.engine.guard.model)[0]
        self.prompt_tokens = IncrementalTokenizer(self.engine.guard.tokenizer)
        """Tokenises each cut's prompt from the previous one's."""
        self.current_tokens = IncrementalTokenizer(self.engine.guard.tokenizer)
        """Tokenises the prompt of the whole response so far, from the previous push's."""
        self.response_tokens = IncrementalTokenizer(self.engine.guard.tokenizer)
        """Tokenises the response alone, for guard-token cuts."""
        if self.cuts.kind is CutKind.GUARD_TOKENS and not self.response_tokens.incremental:
            raise InvalidRequest(
                "this guard's tokenizer merges across word boundaries, so a guard-token cut is not "
                "final until the response is; cut every M words (CUT_KIND_WORDS) instead"
            )

    def push(self, delta: str) -> list[Segment]:
        """Append `delta` to the response; the scores of the cuts it completes."""
        return self.run(self.plan_push(delta))

    def close(self) -> list[Segment]:
        """The response is complete: the scores of the cuts still due, the last at its end."""
        return self.run(self.plan_close())

    def plan_push(self, delta: str) -> list[CutInput]:
        """Append `delta`; the tokenised cuts it completes (to run in order, once each)."""
        if self.closed:
            raise InvalidRequest("the session is closed")
        self.text += delta
        limits = self.engine.config.limits
        if len(self.text) > limits.max_conversation_chars:  # before any tokenising of it
            raise InvalidRequest(
                f"the response has reached {len(self.text)} characters, more than any prompt within "
                f"--max-conversation-tokens ({limits.max_conversation_tokens}) can hold"
            )
        return self._inputs([c for c in self._ready_cuts() if c > self._planned])

    def plan_close(self) -> list[CutInput]:
        """Close the response; the cuts of `plan_cuts` on it not yet planned (its end, and guard-token
        cuts that were still unsettled)."""
        if self.closed:
            raise InvalidRequest("the session is closed")
        self.closed = True
        final = plan_cuts(self.text, self.cuts, self.engine.guard.tokenizer)
        return self._inputs([c for c in final if c > self._planned])

    def jobs(self, inputs: list[CutInput]) -> list[TailJob]:
        """The forward work of `inputs` over this session's cache (`forward_tails_hidden`)."""
        return [TailJob(self.state, inp.ids, inp.stable) for inp in inputs]

    @torch.inference_mode()
    def segments(self, inputs: list[CutInput], hidden: torch.Tensor) -> list[Segment]:
        """The cuts' STAR segments from the final hidden states [len(inputs), H] at their verdict
        positions, under the session's convention."""
        g = self.engine.guard
        if self.convention is Convention.PUBLISHED:
            ps = processed_p_safe(g, full_logits(g, hidden), [i.ids for i in inputs])
        else:
            ps = [p_safe(d, self.temperature) for d in verdict_logit_diff(g, hidden).float().tolist()]
        self.cuts_scored += len(inputs)
        return [Segment(end=i.end, p_safe=p) for i, p in zip(inputs, ps, strict=True)]

    def run(self, inputs: list[CutInput]) -> list[Segment]:
        """Score `inputs` in this thread: the cuts of one push share forwards (`forward_groups`)."""
        g, out = self.engine.guard, []
        for group in forward_groups(inputs):
            hidden = forward_tails_hidden(g, self.jobs(group), self.engine.pad_id, self.engine.head)
            out += self.segments(group, hidden)
        return out

    def _ready_cuts(self) -> list[int]:
        """Cuts that later text can no longer move: every M-th word's end once another word has begun
        (all of `plan_cuts`'s but the last, the response's current end), or every N-th guard token's end
        once that token is settled."""
        if self.cuts.kind is CutKind.WORDS:
            return plan_cuts(self.text, self.cuts)[:-1]
        tok = self.response_tokens
        enc = tok.encode(self.text)
        ends = [e for e in enc.ends[: tok.reusable(enc, len(self.text))] if e > 0]
        return sorted(set(ends[self.cuts.every - 1 :: self.cuts.every]))

    def _inputs(self, cuts: list[int]) -> list[CutInput]:
        if not cuts:
            return []
        # the session's cuts in all, like one Score request's: one delta cannot queue thousands
        self.engine.config.limits.check_cuts(self.cuts_planned + len(cuts))
        self.cuts_planned += len(cuts)
        now = self.current_tokens.encode(self._prompt(self.text)).ids
        out: list[CutInput] = []
        for c in cuts:
            ids = self.prompt_tokens.encode(self._prompt(self.text[:c])).ids
            self._check_length(len(ids))
            # Tokens this cut shares with the response so far stay valid for later cuts; at least the
            # last token is left to the tail, whose final hidden state is the verdict position.
            out.append(CutInput(c, ids, min(common_prefix(ids, now), len(ids) - 1)))
            self._planned = c
        return out

    def _prompt(self, response: str) -> str:
        """The guard prompt for the response so far (under the published convention its words joined
        by single spaces, as prepare's Score path shows them; cuts fall between words, so this is the
        same text)."""
        if self.convention is Convention.PUBLISHED:
            response = published_text(response)
        return self.engine.guard.template.render(self.conversation.with_response(response))

    def _check_length(self, tokens: int) -> None:
        self.engine.config.limits.check_tokens(tokens)
        if self._window is not None and tokens >= self._window:
            raise InvalidRequest(
                f"the guard prompt has reached {tokens} tokens, the guard's attention window "
                f"({self._window}); live moderation on this guard covers prompts below it"
            )

    @property
    def cache_tokens(self) -> int:
        """Guard tokens whose keys and values the session holds."""
        return len(self.state.ids)
