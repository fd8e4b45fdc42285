"""Which scorer a run talks to: a scores file, an in-process guard, or scorer service replicas."""

from __future__ import annotations

from collections.abc import Callable

from trainer_client.scoring.prefetch import AsyncScorer


def scorer_from(scores_file: str | None, scorer: str | None, guard_preset: str) -> Callable[[], AsyncScorer]:
    """A factory of the scorer named by `scores_file` (a precomputed JSONL) or else `scorer`:
    `local:GUARD_DIR` (an in-process guard with `guard_preset`) or `HOST:PORT[,HOST:PORT...]`."""
    if scores_file:
        from trainer_client.scoring.scores_file import FileScorer

        path = scores_file
        return lambda: FileScorer(path)
    if not scorer:
        raise ValueError("no scorer: set scorer (host:port or local:GUARD_DIR) or scores_file")
    spec = scorer
    if spec.startswith("local:"):
        from trainer_client.in_process import LocalScorer

        return lambda: LocalScorer.from_dir(spec[len("local:") :], guard_preset)

    def remote() -> AsyncScorer:
        from star_client import AsyncScorerClient

        return AsyncScorerClient(spec)

    return remote
