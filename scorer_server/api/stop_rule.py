"""The stop rule of a live-moderation session: stop at the first run of unsafe cuts long enough."""

from __future__ import annotations

from star_contract.types import ModerateOptions, ModerationStop, Segment


class StopRule:
    """Watches a session's cuts in order; `observe` returns the Stop once `consecutive` cuts in a row
    have P(safe) below `unsafe_below`."""

    def __init__(self, options: ModerateOptions) -> None:
        self.options = options
        self._safe_end = 0
        self._run = 0

    def observe(self, segment: Segment) -> ModerationStop | None:
        if segment.p_safe >= self.options.unsafe_below:
            self._safe_end, self._run = segment.end, 0
            return None
        self._run += 1
        if self._run >= self.options.consecutive:
            return ModerationStop(self._safe_end, segment.end, segment.p_safe)
        return None
