"""Planning a response for the one-pass layout: the shared trunk and a private tail per cut.

For every cut c the guard's input is exactly `ids_c = tokenize(render(conversation, response[:c]))`,
the per-cut definition. The full-response input `F = ids_last` is the *trunk*. Cut c shares the
longest common prefix `L_c` of `ids_c` and `F`; its private *tail* is `ids_c[L_c:]`. In a causal model
the hidden states of `F[:L_c]` depend only on those tokens, so a tail that attends to the trunk's first
`L_c` tokens and causally to itself, at positions `L_c, L_c + 1, ...`, computes exactly the per-cut
forward. Usually the tail is just the template suffix; where the tokenizer merges across the cut or the
template strips whitespace, the tail also holds the few response tokens that differ. Nothing needs a
separate code path, and no cut can come out different from the per-cut definition.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from scorer_server.engine.prepare import prepare
from scorer_server.engine.work import Read, Row, Tail
from scorer_server.guards.guard import Guard
from scorer_server.guards.verdict import safe_mask
from scorer_server.limits import Limits
from star_contract.errors import InvalidRequest
from star_contract.types import Convention, ScoreRequest

if TYPE_CHECKING:
    from scorer_server.engine.caches import HeadCache


@dataclass
class ResponsePlan:
    """One response laid out for scoring."""

    request: ScoreRequest
    cuts: list[int]
    """Character offsets of the cuts in the response."""
    trunk: list[int]
    """Guard token ids of the full-response prompt."""
    shared: list[int]
    """Per prompt (cut i's reading node n at i x nodes + n): how many trunk tokens it shares."""
    tails: list[list[int]]
    """Per prompt: its private tokens after the shared part (empty: read straight off the trunk)."""
    per_cut_tokens: list[int] = field(default_factory=list)
    """Per prompt: the length of its whole input (for the per-cut baseline's accounting)."""
    nodes: int = 1
    """Prompts read per cut: the guard's reading tree (guards/reader.py); 1 for most guards."""
    safe: tuple[bool, ...] = ()
    """Per verdict class, whether it counts as safe for this request (empty: the guard's reading)."""

    def prompt(self, j: int) -> list[int]:
        """Prompt j's whole guard input: its shared trunk prefix and its tail."""
        return self.trunk[: self.shared[j]] + self.tails[j]

    def prompts_of(self, idx: list[int]) -> list[int]:
        """The prompts of the cuts `idx`, cut by cut."""
        return [i * self.nodes + n for i in idx for n in range(self.nodes)]

    def cost(self, idx: list[int]) -> int:
        """Tokens one row holding the cuts `idx` processes."""
        return self.trunk_len(idx) + sum(len(self.tails[j]) for j in self.prompts_of(idx))

    def trunk_len(self, idx: list[int]) -> int:
        return max(self.shared[j] for j in self.prompts_of(idx))


@dataclass
class WorkItem:
    """Some of a response's cuts: one row of a forward pass (a `Work`)."""

    plan: ResponsePlan
    cut_indices: list[int]
    part: int = 0
    parts: int = 1

    @property
    def tokens(self) -> int:
        return self.plan.cost(self.cut_indices)

    def row(self, head: HeadCache | None) -> Row:
        """The trunk up to the furthest cut's shared prefix, from the longest head prefix it begins with
        (keeping every cut's verdict position among the computed tokens), and a tail per cut."""
        plan, prompts = self.plan, self.plan.prompts_of(self.cut_indices)
        end = plan.trunk_len(self.cut_indices)
        m = head.take(plan.trunk[:end], min(plan.shared[j] for j in prompts)) if head is not None else 0
        tails = [Tail(plan.shared[j], plan.tails[j]) for j in prompts]
        return Row(head.state if m and head is not None else None, m, plan.trunk[m:end], tails)

    def reads(self) -> list[Read]:
        request = self.plan.request
        published = request.convention is Convention.PUBLISHED
        n = self.plan.nodes
        return [
            Read(
                self.plan.cuts[i],
                request.convention,
                request.temperature,
                self.plan.prompt(i * n) if published else None,
                n,
                self.plan.safe,
            )
            for i in self.cut_indices
        ]


def common_prefix(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Length of the longest common prefix of two token lists (or strings): a binary search over
    slice comparisons, which run in C (a per-element loop costs ~70 us on a 1,400-token prompt)."""
    lo, hi = 0, min(len(a), len(b))
    if a[:hi] == b[:hi]:
        return hi
    while lo < hi:  # invariant: a[:lo] == b[:lo] and a[:hi + 1] != b[:hi + 1]
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def plan_response(guard: Guard, request: ScoreRequest, limits: Limits | None = None) -> ResponsePlan:
    """Render and tokenise every cut of one response (limits checked first, see `prepare`) and lay it
    out as trunk + tails."""
    prep = prepare(
        request, guard.template, guard.tokenizer, lambda t: guard.encode([t])[0], limits or Limits()
    )
    reader = guard.reader
    safe = safe_mask(guard.preset, request.safe_classes) if request.safe_classes else ()
    if reader.nodes > 1 and request.convention is Convention.PUBLISHED:
        raise InvalidRequest("the published convention reads guards that answer first; this one does not")
    if reader.nodes == 1:
        ids = [*guard.encode(prep.texts[:-1]), prep.trunk] if len(prep.texts) > 1 else [prep.trunk]
    else:  # every reading node's prompt, cut by cut (guards/reader.py)
        ids = guard.encode([t for text in prep.texts for t in reader.texts(text)])
    trunk = prep.trunk
    shared: list[int] = []
    tails: list[list[int]] = []
    for x in ids:
        lcp = common_prefix(x, trunk)
        shared.append(lcp)
        tails.append(x[lcp:])  # empty when the input is a prefix of the trunk: read off the trunk
    return ResponsePlan(request, prep.cuts, trunk, shared, tails, [len(x) for x in ids], reader.nodes, safe)


def split_plan(plan: ResponsePlan, max_row_tokens: int) -> list[WorkItem]:
    """Group consecutive cuts into rows of at most `max_row_tokens` tokens (a lone cut may exceed it)."""
    groups: list[list[int]] = []
    cur: list[int] = []
    for i in range(len(plan.cuts)):
        if cur and plan.cost([*cur, i]) > max_row_tokens:
            groups.append(cur)
            cur = []
        cur.append(i)
    if cur:
        groups.append(cur)
    return [WorkItem(plan, g, part=k, parts=len(groups)) for k, g in enumerate(groups)]
