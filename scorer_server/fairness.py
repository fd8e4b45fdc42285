"""The order in which the batcher fills a forward: tenants take turns, so one tenant's queue cannot
delay another's work by more than one row per turn.

Queued work falls in two classes: urgent (live-moderation cuts, a user waiting) and the rest; urgent
work goes first, whoever sent it. Within a class the tenants take turns: the tenant that led a forward
least recently leads the next one with its own best item (highest priority, then oldest), and the rest
of the forward is filled round-robin across the tenants (each tenant's first candidate, then each one's
second, ...). A tenant's `priority` orders its own work only: it cannot move one tenant ahead of
another. Within one tenant the order is the single-tenant one: highest priority first, then the rows
closest in length to the leading row (less padding), then the oldest. With a single tenant (a server
without auth) this is exactly priority-then-age with length-matched filling.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, TypeVar


class Queued(Protocol):
    """What the order reads of a queued item."""

    @property
    def priority(self) -> int: ...
    @property
    def seq(self) -> int: ...
    @property
    def tokens(self) -> int: ...
    @property
    def tenant(self) -> str: ...


Q = TypeVar("Q", bound=Queued)
NEVER = -1
"""The turn stamp of a tenant that has not led a forward yet."""


def fill_order(queue: Sequence[Q], turns: Mapping[str, int], urgent: int) -> list[Q]:
    """`queue` in the order a forward is filled (the first item leads it: it always goes).

    `turns[tenant]` stamps when the tenant last led a forward (larger: more recently; absent: never);
    items with `priority >= urgent` form the urgent class."""
    if not queue:
        return []
    lead_urgent = any(e.priority >= urgent for e in queue)
    classes = [
        [e for e in queue if (e.priority >= urgent) == lead_urgent],
        [e for e in queue if (e.priority >= urgent) != lead_urgent],
    ]
    best: dict[str, Q] = {}
    for e in classes[0]:
        b = best.get(e.tenant)
        if b is None or (-e.priority, e.seq) < (-b.priority, b.seq):
            best[e.tenant] = e
    tenants = sorted(best, key=lambda t: (turns.get(t, NEVER), -best[t].priority, best[t].seq))
    head = best[tenants[0]]
    others = sorted({e.tenant for e in classes[1]} - set(tenants), key=lambda t: (turns.get(t, NEVER), t))
    order = tenants + others
    out: list[Q] = []
    for members in classes:
        per_tenant: dict[str, list[Q]] = {t: [] for t in order}
        for e in sorted(
            members, key=lambda e: (-e.priority, e is not head, abs(e.tokens - head.tokens), e.seq)
        ):
            per_tenant[e.tenant].append(e)
        out += round_robin([per_tenant[t] for t in order])
    return out


def round_robin(lists: Sequence[Sequence[Q]]) -> list[Q]:
    """The first of each list, then the second of each, ... (lists in the order given)."""
    out: list[Q] = []
    depth = max((len(x) for x in lists), default=0)
    for k in range(depth):
        out += [x[k] for x in lists if k < len(x)]
    return out
