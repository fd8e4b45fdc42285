"""The token budget of a forward, defined once: the batcher fills batches by it, the engine packs rows
by it, and Score items and live-moderation pushes are split into rows by it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TokenBudget:
    """How much one forward and one row of it may hold."""

    max_batch_tokens: int = 16384
    """Padded tokens in one forward (rows x longest row): bounds activations and the mask's memory."""
    max_row_tokens: int = 4096
    """Tokens in one row: a response or a push whose trunk and tails exceed it is split over rows."""

    max_padding: float = 2.0
    """A forward's padded tokens at most this many times its real ones (when the batcher mixes rows of
    different lengths: a short live-moderation row beside a long Score row would otherwise be padded to
    the long one)."""

    def admits(self, rows: int, longest: int, cap: int | None = None, tokens: int | None = None) -> bool:
        """Whether `rows` rows of at most `longest` tokens (`tokens` in all, when known) fit one forward,
        within `cap` if smaller than the budget."""
        limit = self.max_batch_tokens if cap is None else min(cap, self.max_batch_tokens)
        padded = rows * longest
        return padded <= limit and (tokens is None or padded <= self.max_padding * tokens)
