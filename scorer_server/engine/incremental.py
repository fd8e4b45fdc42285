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
from typing import Any

import torch

from scorer_server.engine.cuts import plan_cuts
from scorer_server.engine.engine import StarEngine
from scorer_server.engine.plan import common_prefix
from scorer_server.guards.head import verdict_logit_diff
from scorer_server.guards.verdict import p_safe
from star_contract.errors import InvalidRequest
from star_contract.types import Conversation, CutKind, CutSpec, Segment


@dataclass
class SessionStats:
    """Guard tokens a session has computed, for the moderation benchmark and metrics."""

    trunk_tokens: int = 0
    tail_tokens: int = 0
    rollbacks: int = 0
    cuts: int = 0


@dataclass
class IncrementalSession:
    """STAR scores of a response arriving in deltas of any size (down to single characters)."""

    engine: StarEngine
    conversation: Conversation
    """The conversation so far, ending with the assistant message being generated (usually empty)."""
    cuts: CutSpec = field(default_factory=CutSpec)
    temperature: float = 1.0
    stats: SessionStats = field(default_factory=SessionStats)

    def __post_init__(self) -> None:
        self.conversation.require_response()
        if self.cuts.kind is not CutKind.WORDS:
            raise InvalidRequest("incremental scoring cuts every M words; use CUT_KIND_WORDS")
        self.text = self.conversation.response
        self.closed = False
        self._emitted: list[int] = []
        self._cached: list[int] = []
        self._cache: Any = None

    def push(self, delta: str) -> list[Segment]:
        """Append `delta` to the response; the scores of the cuts it completes."""
        if self.closed:
            raise InvalidRequest("the session is closed")
        self.text += delta
        return self._score([c for c in self._ready_cuts() if not self._emitted or c > self._emitted[-1]])

    def close(self) -> list[Segment]:
        """The response is complete: the score of its final cut (its end)."""
        self.closed = True
        n = len(self.text)
        return self._score([n] if not self._emitted or self._emitted[-1] < n else [])

    def _ready_cuts(self) -> list[int]:
        """Cuts that later text can no longer move: all of `plan_cuts`'s but the last (the response's
        current end), i.e. every M-th word's end once another word has begun."""
        return plan_cuts(self.text, self.cuts)[:-1]

    @torch.inference_mode()
    def _score(self, cuts: list[int]) -> list[Segment]:
        if not cuts:
            return []
        g = self.engine.guard
        now = g.encode([g.template.render(self.conversation.with_response(self.text))])[0]
        self.engine.config.limits.check_tokens(len(now))
        out: list[Segment] = []
        for c in cuts:
            ids = g.encode([g.template.render(self.conversation.with_response(self.text[:c]))])[0]
            # Tokens this cut shares with the response so far stay valid for later cuts; at least the
            # last token is left to the tail, whose final hidden state is the verdict position.
            stable = min(common_prefix(ids, now), len(ids) - 1)
            diff = self._cut(ids, stable)
            out.append(Segment(end=c, p_safe=p_safe(diff, self.temperature)))
            self._emitted.append(c)
            self.stats.cuts += 1
        return out

    @torch.inference_mode()
    def _cut(self, ids: list[int], stable: int) -> float:
        """logit(safe) - logit(unsafe) at the end of `ids`, in one forward from the cache, which then
        holds exactly `ids[:stable]` (the tail's keys and values are dropped again)."""
        self._roll_back(ids[:stable])
        start = len(self._cached)
        hidden = self._forward(ids[start:], start)
        self._cache.crop(stable - len(ids))
        self.stats.trunk_tokens += stable - start
        self.stats.tail_tokens += len(ids) - stable
        self._cached = list(ids[:stable])
        return float(verdict_logit_diff(self.engine.guard, hidden[:, -1])[0])

    def _roll_back(self, ids: list[int]) -> None:
        """Cut the cache back to the longest prefix it shares with `ids`."""
        from transformers import DynamicCache

        if self._cache is None:
            self._cache = DynamicCache(config=self.engine.guard.model.config)
        keep = common_prefix(self._cached, ids)
        if keep < len(self._cached):
            self._cache.crop(keep - len(self._cached))
            self._cached = self._cached[:keep]
            self.stats.rollbacks += 1

    def _forward(self, ids: list[int], start: int) -> torch.Tensor:
        g = self.engine.guard
        x = torch.tensor([ids], device=g.device)
        pos = torch.arange(start, start + len(ids), device=g.device)[None]
        out = g.model.base_model(input_ids=x, position_ids=pos, cache=self._cache, use_cache=True)
        return out.last_hidden_state

    @property
    def cache_tokens(self) -> int:
        """Guard tokens whose keys and values the session holds."""
        return len(self._cached)
