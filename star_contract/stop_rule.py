"""The stop rule of a live-moderation session: stop at the first run of unsafe cuts long enough.

Shared by the scorer (Moderate sessions) and the gateway (whole responses scored with Score), so a
stream and a whole answer stop at the same offset."""

from __future__ import annotations

from collections.abc import Iterable

from star_contract.types import ModerateOptions, ModerationStop, Segment


class StopRule:
    """Watches a session's cuts in order; `observe` returns the Stop once `consecutive` cuts in a row
    have P(safe) below `unsafe_below`."""

    def __init__(self, options: ModerateOptions) -> None:
        self.options = options
        self._safe_end = 0
        self._run = 0

    @property
    def safe_end(self) -> int:
        """The end of the last cut seen safe (0 before any): the rule's stop offset if it fired now."""
        return self._safe_end

    def observe(self, segment: Segment) -> ModerationStop | None:
        if segment.p_safe >= self.options.unsafe_below:
            self._safe_end, self._run = segment.end, 0
            return None
        self._run += 1
        if self._run >= self.options.consecutive:
            return ModerationStop(self._safe_end, segment.end, segment.p_safe)
        return None


def first_stop(segments: Iterable[Segment], options: ModerateOptions) -> ModerationStop | None:
    """Where `StopRule` stops a response whose cuts are `segments` (None: it never fires)."""
    rule = StopRule(options)
    for segment in segments:
        if (stop := rule.observe(segment)) is not None:
            return stop
    return None
