"""What the loop records: one row per optimizer step (metrics.jsonl) and the run's summary."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

from trainer_client.loss import LossOutput
from trainer_client.scoring.prefetch import ExampleScores

SUMMARY_MEANS = ("loss", "weighted_ce", "kl", "mean_star", "share_below_half", "tokens_per_s")
GUARD_MEANS = ("guards_abs_diff", "guards_split_share", "guards_verdict_split_share")
"""Several guards only: how much they disagree (see `guard_disagreement`)."""


def step_row(
    step: int,
    epoch: int,
    lr: float,
    stats: Sequence[LossOutput],
    tokens: int,
    wait_s: float,
    t0: float,
    t1: float,
) -> dict[str, float]:
    """The metrics of one optimizer step over its micro-batches, weighted by label tokens."""
    n = max(1, sum(s.label_tokens for s in stats))

    def avg(attr: str) -> float:
        return sum(getattr(s, attr) * s.label_tokens for s in stats) / n

    return {
        "step": step + 1,
        "epoch": epoch,
        "lr": lr,
        "loss": sum(float(s.loss.detach()) * s.label_tokens for s in stats) / n,
        "weighted_ce": avg("weighted_ce"),
        "kl": avg("kl"),
        "mean_star": avg("mean_star"),
        "share_below_half": avg("share_below_half"),
        "label_tokens": float(sum(s.label_tokens for s in stats)),
        "tokens_per_s": tokens / max(1e-9, t1 - t0),
        "scorer_wait_s": wait_s,
        "step_s": t1 - t0,
        "t_start": t0,
        "t_end": t1,
    }


def guard_disagreement(scores: Sequence[ExampleScores], verdicts: bool = False) -> dict[str, float]:
    """How the guards of an ensemble disagree over a step's examples (empty with one guard):
    `guards_abs_diff`, the mean over cuts of |P(safe) difference| (averaged over guard pairs);
    `guards_split_share`, the share of cuts where the guards fall on both sides of 0.5 (some below,
    some not); with `verdicts`, `guards_verdict_split_share`, the share of examples RS would keep by
    one guard's verdict and drop by another's."""
    several = [s.guards for s in scores if len(s.guards) > 1]
    if not several:
        return {}
    diffs: list[float] = []
    splits = 0
    for guards in several:
        for turns in zip(*(g.scores for g in guards), strict=True):
            for cut in zip(*(t.segments for t in turns), strict=True):
                p = [seg.p_safe for seg in cut]
                pairs = list(combinations(p, 2))
                diffs.append(sum(abs(a - b) for a, b in pairs) / len(pairs))
                splits += min(p) < 0.5 <= max(p)
    out: dict[str, float] = {}
    if diffs:
        out["guards_abs_diff"] = sum(diffs) / len(diffs)
        out["guards_split_share"] = splits / len(diffs)
    if verdicts:
        split = sum(len({g.keep for g in gs}) > 1 for gs in several)
        out["guards_verdict_split_share"] = split / len(several)
    return out


def run_summary(rows: Sequence[dict[str, float]], wall_s: float, guard_requests: int) -> dict[str, float]:
    """Means over the run's steps, wall time, time spent waiting for the scorer, guard requests sent."""

    def mean(k: str) -> float:
        return float(sum(r[k] for r in rows) / len(rows)) if rows else 0.0

    wait = float(sum(r["scorer_wait_s"] for r in rows))
    out = {k: mean(k) for k in SUMMARY_MEANS}
    out.update({k: mean(k) for k in GUARD_MEANS if rows and all(k in r for r in rows)})
    out.update(
        wall_s=wall_s,
        scorer_wait_s=wait,
        scorer_wait_share=wait / wall_s if wall_s > 0 else 0.0,
        final_loss=rows[-1]["loss"] if rows else 0.0,
        guard_requests=float(guard_requests),
    )
    return out
