"""The STAR side of a batch, for star-train and StarDSSTrainer alike: its examples' scores (from the
prefetcher, in the known order, or fetched at once when a batch comes out of order) and the tensors the
loss needs."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np

from trainer_client.data import Batch, Example
from trainer_client.scoring.cache import ScoreCache
from trainer_client.scoring.prefetch import AsyncScorer, ExampleScores, Prefetcher
from trainer_client.train.batching import scored_batch

log = logging.getLogger(__name__)


class StarBatches:
    """Looks up a batch's scores by its examples' indices and builds its `Batch`."""

    def __init__(
        self,
        examples: Sequence[Example],
        pad_id: int,
        method: str,
        make_scorer: Callable[[], AsyncScorer] | None,
        cache: ScoreCache | None,
        depth: int,
        delay_s: float = 0.0,
        in_order: bool = False,
    ) -> None:
        self.examples, self.pad_id, self.method, self.cache = examples, pad_id, method, cache
        self.in_order = in_order
        """Batches always come in the order given to `start` (star-train's sampler): a batch out of it
        is a bug, raised, not fetched."""
        self.ref_lp: dict[int, np.ndarray] | None = None
        self.out_of_order = 0
        """Batches that did not come in the predicted order (fetched when they came)."""
        self.prefetcher: Prefetcher | None = None
        if method in ("dss", "rs") and make_scorer is not None:
            self.prefetcher = Prefetcher(
                make_scorer,
                examples,
                cache,
                star=method == "dss",
                verdicts=method == "rs",
                depth=depth,
                delay_s=delay_s,
            )

    def start(self, order: Sequence[list[int]]) -> None:
        if self.prefetcher is not None:
            self.prefetcher.start(iter(order))

    def scores(self, indices: list[int]) -> tuple[list[ExampleScores] | None, float]:
        """The examples' scores and the seconds spent waiting for them."""
        pf = self.prefetcher
        if pf is None:
            if self.method in ("dss", "rs"):
                raise RuntimeError("the scorer is closed (training has finished)")
            return None, 0.0
        try:
            idx, got, waited = pf.next()
        except StopIteration:
            idx, got, waited = [], [], 0.0
        if idx == indices:
            return got, waited
        if self.in_order:
            raise RuntimeError(f"the scores of batch {idx} came when batch {indices} was asked for")
        if self.out_of_order == 0:
            log.warning("a batch came out of the predicted order; its scores are fetched now (no prefetch)")
        self.out_of_order += 1
        return pf.fetch_now(indices), 0.0

    def batch(self, indices: list[int]) -> tuple[Batch, list[ExampleScores], float]:
        """The Batch of these examples (weights, keep flags, reference log-probs), their scores and the
        wait."""
        got, waited = self.scores(indices)
        exs = [self.examples[i] for i in indices]
        return scored_batch(exs, self.pad_id, self.method, got, self.ref_lp), got or [], waited

    @property
    def last_ready(self) -> bool:
        """Whether the last batch's scores had all arrived when it was asked for."""
        return bool(self.prefetcher and self.prefetcher.last_ready)

    @property
    def guard_requests(self) -> int:
        return self.prefetcher.fetcher.scored_requests if self.prefetcher else 0

    def close(self) -> None:
        if self.prefetcher is not None:
            self.prefetcher.close()
            self.prefetcher = None
        if self.cache is not None:
            self.cache.close()
            self.cache = None
