"""The learning-rate schedule of a run."""

from __future__ import annotations

import math
from collections.abc import Callable


def cosine_with_floor(total: int, warmup: int, floor: float) -> Callable[[int], float]:
    """LR factor: linear warmup to 1, then cosine down to `floor` (= min_lr / lr) at the last step."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return f
