"""Which scorer a run talks to: a scores file, an in-process guard, scorer service replicas, or several
guards combined (`EnsembleScorer`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from trainer_client.scoring.prefetch import AsyncScorer


def scorer_from(
    scores_file: str | None,
    scorer: str | None,
    guard_preset: str,
    scorers: Sequence[str] = (),
    combine: str = "mean",
    *,
    deadline_s: float | None = None,
) -> Callable[[], AsyncScorer]:
    """A factory of the scorer named by `scores_file` (a precomputed JSONL) or else `scorer`:
    `local:GUARD_DIR` (an in-process guard with `guard_preset`) or `HOST:PORT[,HOST:PORT...]`; or else
    `scorers`, one such entry per guard (a local entry may name its preset: `local:GUARD_DIR@PRESET`),
    combined per cut by `combine` ('mean' or 'min'). `deadline_s` bounds each call to a scorer service,
    waits for replicas that are down or loading included (None: the client's default)."""
    if scores_file:
        from trainer_client.scoring.scores_file import FileScorer

        path = scores_file
        return lambda: FileScorer(path)
    if scorers:
        from trainer_client.scoring.ensemble import COMBINES, EnsembleScorer

        rule = next((c for c in COMBINES if c == combine), None)
        if rule is None:
            raise ValueError(f"combine must be one of {COMBINES}, not {combine!r}")
        parts = [_one(s, guard_preset, True, deadline_s) for s in scorers]
        return lambda: EnsembleScorer([make() for make in parts], rule)
    if not scorer:
        raise ValueError("no scorer: set scorer (host:port or local:GUARD_DIR), scorers or scores_file")
    return _one(scorer, guard_preset, False, deadline_s)


def split_local(spec: str, guard_preset: str) -> tuple[str, str]:
    """(guard directory, preset) of a `scorers` entry `local:DIR[@PRESET]` (a suffix after the last '@'
    is a preset when it holds no '/')."""
    path = spec[len("local:") :]
    head, at, tail = path.rpartition("@")
    if at and head and tail and "/" not in tail:
        return head, tail
    return path, guard_preset


def _one(spec: str, guard_preset: str, presets: bool, deadline_s: float | None) -> Callable[[], AsyncScorer]:
    if spec.startswith("local:"):
        from trainer_client.in_process import LocalScorer

        path, preset = split_local(spec, guard_preset) if presets else (spec[len("local:") :], guard_preset)
        return lambda: LocalScorer.from_dir(path, preset)

    def remote() -> AsyncScorer:
        from star_client import AsyncScorerClient, ClientConfig

        config = ClientConfig() if deadline_s is None else ClientConfig(deadline_s=deadline_s)
        return AsyncScorerClient(spec, config)

    return remote
