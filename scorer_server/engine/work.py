"""What a forward computes: rows of guard tokens over a cache, and the verdicts read from them.

A Score request's cuts and a live-moderation push are the same work. Each becomes one `Row`: the
tokens already cached (`cache`, its first `start` tokens: the guard's template head for a Score item,
the session's trunk for a push), the new trunk tokens after them, and one `Tail` per cut: the cut's
own tokens after the prefix its prompt shares with the trunk (the template suffix, and the few
response tokens a tokenizer merges differently at the cut). A tail attends to the `shared` prefix and,
causally, to itself, at the positions of a plain forward of its prompt, so every cut is exactly the
per-cut forward (plan.py has the argument). With an empty cache a session's row is a Score item's row;
with a cache it is the same row offset by where the cache ends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from scorer_server.engine.caches import HeadCache, KVState
    from star_contract.types import Convention


@dataclass(frozen=True)
class Tail:
    """One cut in a row: its prompt is the row's first `shared` tokens (cache, then trunk) and `ids`."""

    shared: int
    ids: list[int]
    """Empty: the cut's prompt is a prefix of the trunk, its verdict read at position shared - 1."""


@dataclass
class Row:
    """One row of a forward (see the module docstring)."""

    cache: KVState | None
    start: int
    """Cached tokens the row starts from (0 with no cache)."""
    trunk: list[int]
    """New tokens after the cache, at positions start, start + 1, ..."""
    tails: list[Tail]
    store: bool = False
    """Write the trunk's keys and values into `cache` after its first `start` tokens (a session's
    state); False leaves the cache as it is (the shared template head)."""

    def __post_init__(self) -> None:
        end = self.start + len(self.trunk)
        for t in self.tails:
            if not t.ids and not self.start < t.shared <= end:
                raise ValueError(f"a cut read off the trunk must end among its new tokens: {t.shared}")

    @property
    def ids(self) -> list[int]:
        """The row's new tokens: the trunk, then each tail."""
        return self.trunk + [t for tail in self.tails for t in tail.ids]


@dataclass(frozen=True)
class Read:
    """How one cut's verdict becomes a score, and where it goes."""

    end: int
    """The cut's character offset in the response."""
    convention: Convention
    temperature: float
    prompt: list[int] | None = None
    """The cut's whole guard prompt, for the published convention (its processed scores need it)."""
    nodes: int = 1
    """Tails (and hidden states) of this cut in its row: the guard's reading nodes (guards/reader.py)."""
    safe: tuple[bool, ...] = ()
    """Per verdict class, whether it counts as safe for this request; empty: the guard's reading."""


class Work(Protocol):
    """A unit of forward work: one Score item or one live-moderation push."""

    @property
    def tokens(self) -> int:
        """Guard tokens its row will compute (what the batcher budgets)."""
        ...

    def row(self, head: HeadCache | None) -> Row:
        """Lay the work out as a row (called on the forward thread, just before the forward)."""
        ...

    def reads(self) -> list[Read]:
        """One per cut, in order; cut k's `nodes` tails follow each other in the row."""
        ...
