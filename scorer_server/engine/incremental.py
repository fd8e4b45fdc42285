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

from scorer_server.engine.caches import HeadCache, KVState
from scorer_server.engine.cuts import plan_cuts
from scorer_server.engine.incremental_tokens import IncrementalTokenizer
from scorer_server.engine.plan import common_prefix
from scorer_server.engine.prepare import check_published, published_text
from scorer_server.engine.work import Read, Row, Tail
from scorer_server.guards.guard import GuardSide
from scorer_server.guards.verdict import safe_mask
from scorer_server.limits import Limits
from star_contract.errors import InvalidRequest
from star_contract.types import Convention, Conversation, CutKind, CutSpec


@dataclass(frozen=True)
class CutInput:
    """One cut a delta completed, tokenised: what the guard must compute for it."""

    end: int
    """Character offset of the cut in the response."""
    ids: list[int]
    """The per-cut prompt: tokenize(render(conversation, response[:end]))."""
    stable: int
    """Leading tokens every prompt of the cut shares with the response so far (later cuts start from
    them); less than each prompt's length."""
    branches: tuple[list[int], ...] = ()
    """The other prompts the cut is read at, for guards that write fields before their verdict
    (guards/reader.py: the reading tree's nodes after the first, which is `ids`)."""

    @property
    def prompts(self) -> list[list[int]]:
        return [self.ids, *self.branches]


@dataclass(eq=False)
class SessionPush:
    """Some cuts of one push of a session, over the session's cache: a `Work` like a Score item."""

    state: KVState
    inputs: list[CutInput]
    convention: Convention
    temperature: float
    safe: tuple[bool, ...] = ()

    @property
    def tokens(self) -> int:
        """Guard tokens to compute, as the batcher budgets them (the cache may shrink before it runs)."""
        trunk = max(i.stable for i in self.inputs)
        tails = sum(len(p) - i.stable for i in self.inputs for p in i.prompts)
        return max(1, trunk - min(len(self.state.ids), trunk) + tails)

    def row(self, head: HeadCache | None) -> Row:
        """The longest stable prefix among the cuts as the trunk after what the cache still holds of it
        (a new or evicted state starts from the template head), and a tail per cut."""
        state = self.state
        trunk: list[int] = []
        for inp in self.inputs:
            if inp.stable > len(trunk):
                trunk = inp.ids[: inp.stable]
        state.roll_back(trunk)
        prompts = [p for i in self.inputs for p in i.prompts]
        shared = [min(common_prefix(p, trunk), len(p) - 1) for p in prompts]
        if not state.serves(min([len(state.ids), *shared])):
            state.clear()  # a sliding layer dropped keys a query here needs: recompute (rare)
        if head is not None and not state.ids:
            state.copy_prefix(head.state, head.take(trunk, len(trunk) + 1))
        start = len(state.ids)
        tails = [Tail(s, p[s:]) for s, p in zip(shared, prompts, strict=True)]
        return Row(state, start, trunk[start:], tails, store=True)

    def reads(self) -> list[Read]:
        published = self.convention is Convention.PUBLISHED
        return [
            Read(
                i.end,
                self.convention,
                self.temperature,
                i.ids if published else None,
                len(i.prompts),
                self.safe,
            )
            for i in self.inputs
        ]


@dataclass
class IncrementalSession:
    """The planning side of a live-moderation session: a response arriving in deltas of any size (down
    to single characters), tokenised into the cuts each delta completes. `pushes` turns them into
    `SessionPush` work over the session's cache, which the engine runs like any other work (the local
    backend: through the batcher, beside Score items)."""

    guard: GuardSide
    conversation: Conversation
    """The conversation so far, ending with the assistant message being generated (usually empty)."""
    cuts: CutSpec = field(default_factory=CutSpec)
    temperature: float = 1.0
    convention: Convention = Convention.RAW
    """RAW, or PUBLISHED: the guard sees the response's words joined by single spaces, and P(safe) is
    read from generate()'s processed scores (see guards/published.py)."""
    limits: Limits = field(default_factory=Limits)
    window: int | None = None
    """The guard's sliding attention window, if it has sliding layers (their old keys are dropped)."""
    safe_classes: tuple[str, ...] = ()
    """Verdict classes that also count as safe for this session (ModerateOptions.safe_classes)."""

    def __post_init__(self) -> None:
        self.conversation.require_response()
        if self.cuts.kind is CutKind.OFFSETS:
            raise InvalidRequest(
                "live moderation cuts every M words or N guard tokens; explicit offsets need the "
                "whole response (use Score)"
            )
        if self.cuts.every < 1:
            raise InvalidRequest(f"cut spacing must be >= 1, got {self.cuts.every}")
        self._safe = safe_mask(self.guard.preset, self.safe_classes) if self.safe_classes else ()
        reader = getattr(self.guard, "reader", None)
        self._reader = reader if reader is not None and reader.nodes > 1 else None
        if self.convention is Convention.PUBLISHED:
            check_published(self.cuts.kind, self.temperature)
            if self._reader is not None:
                raise InvalidRequest(
                    "the published convention reads guards that answer first; this one does not"
                )
        self.state = KVState(window=self.window)
        """The guard's keys and values for the stable trunk (evictable: the next cut recomputes)."""
        self.text = self.conversation.response
        self.closed = False
        self.cuts_planned = 0
        self._planned = -1
        tokenizer = self.guard.tokenizer
        self.prompt_tokens = IncrementalTokenizer(tokenizer)
        """Tokenises each cut's prompt from the previous one's."""
        self.current_tokens = IncrementalTokenizer(tokenizer)
        """Tokenises the prompt of the whole response so far, from the previous push's."""
        self.response_tokens = IncrementalTokenizer(tokenizer)
        """Tokenises the response alone, for guard-token cuts."""
        nodes = self._reader.nodes if self._reader is not None else 1
        self.branch_tokens = [IncrementalTokenizer(tokenizer) for _ in range(nodes - 1)]
        """Tokenise each cut's other reading prompts (guards/reader.py) from the previous cut's."""
        if self.cuts.kind is CutKind.GUARD_TOKENS and not self.response_tokens.incremental:
            raise InvalidRequest(
                "this guard's tokenizer merges across word boundaries, so a guard-token cut is not "
                "final until the response is; cut every M words (CUT_KIND_WORDS) instead"
            )

    def plan_push(self, delta: str) -> list[CutInput]:
        """Append `delta`; the tokenised cuts it completes (to run in order, once each)."""
        if self.closed:
            raise InvalidRequest("the session is closed")
        self.text += delta
        if len(self.text) > self.limits.max_conversation_chars:  # before any tokenising of it
            raise InvalidRequest(
                f"the response has reached {len(self.text)} characters, more than any prompt within "
                f"--max-conversation-tokens ({self.limits.max_conversation_tokens}) can hold"
            )
        return self._inputs([c for c in self._ready_cuts() if c > self._planned])

    def plan_close(self) -> list[CutInput]:
        """Close the response; the cuts of `plan_cuts` on it not yet planned (its end, and guard-token
        cuts that were still unsettled)."""
        if self.closed:
            raise InvalidRequest("the session is closed")
        self.closed = True
        final = plan_cuts(self.text, self.cuts, self.guard.tokenizer)
        return self._inputs([c for c in final if c > self._planned])

    def pushes(self, inputs: list[CutInput], max_row_tokens: int) -> list[SessionPush]:
        """`inputs` as work over this session's cache, in order, each within `max_row_tokens` (the
        engine's row budget; a lone cut may exceed it). Run them one after the other: each starts from
        the trunk the one before stored."""
        out: list[SessionPush] = []
        for inp in inputs:
            if out:
                grown = SessionPush(
                    self.state, [*out[-1].inputs, inp], self.convention, self.temperature, self._safe
                )
                if grown.tokens <= max_row_tokens:
                    out[-1] = grown
                    continue
            out.append(SessionPush(self.state, [inp], self.convention, self.temperature, self._safe))
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
        self.limits.check_cuts(self.cuts_planned + len(cuts))
        self.cuts_planned += len(cuts)
        now = self.current_tokens.encode(self._prompt(self.text)).ids
        out: list[CutInput] = []
        for c in cuts:
            text = self._prompt(self.text[:c])
            ids = self.prompt_tokens.encode(text).ids
            branches: tuple[list[int], ...] = ()
            if self._reader is not None:
                more = self._reader.texts(text)[1:]
                branches = tuple(t.encode(x).ids for t, x in zip(self.branch_tokens, more, strict=True))
            self.limits.check_tokens(max(len(p) for p in (ids, *branches)))
            # Tokens this cut shares with the response so far stay valid for later cuts; at least the
            # last token of each prompt is left to its tail, whose final hidden state is read.
            stable = min(min(common_prefix(p, now), len(p) - 1) for p in (ids, *branches))
            out.append(CutInput(c, ids, stable, branches))
            self._planned = c
        return out

    def _prompt(self, response: str) -> str:
        """The guard prompt for the response so far (under the published convention its words joined
        by single spaces, as prepare's Score path shows them; cuts fall between words, so this is the
        same text)."""
        if self.convention is Convention.PUBLISHED:
            response = published_text(response)
        return self.guard.template.render(self.conversation.with_response(response))

    @property
    def cache_tokens(self) -> int:
        """Guard tokens whose keys and values the session holds."""
        return len(self.state.ids)
