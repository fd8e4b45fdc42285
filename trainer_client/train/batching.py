"""One micro-batch's tensors from its examples and their scores: what both training loops feed the loss
(`star-train`'s loop and the TRL `StarDSSTrainer`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import cast

import numpy as np
import torch

from trainer_client.data import Batch, Example, collate, example_weights
from trainer_client.loss import (
    KLEstimator,
    LossOutput,
    RSNormalize,
    compute_loss,
    shift_for_causal_lm,
    target_logprobs,
)
from trainer_client.scoring.prefetch import ExampleScores
from trainer_client.train.config_parts import LossConfig


def scored_batch(
    examples: Sequence[Example],
    pad_id: int,
    method: str,
    scores: Sequence[ExampleScores] | None,
    ref_lp: Mapping[int, np.ndarray] | None = None,
) -> Batch:
    """Pad `examples` into a Batch with `method`'s per-token STAR weights ('dss'), per-example keep flags
    ('rs') and precomputed reference log-probs (when `ref_lp` holds them, keyed by example index)."""
    weights = keep = refs = None
    if scores is not None and method == "dss":
        weights = [example_weights(e, s.scores) for e, s in zip(examples, scores, strict=True)]
    if scores is not None and method == "rs":
        keep = [s.keep for s in scores]
    if ref_lp is not None:
        refs = [ref_lp[e.index] for e in examples]
    return collate(examples, pad_id, weights, keep, refs)


def batch_loss(
    loss: LossConfig,
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    b: Batch,
    ref_logits: torch.Tensor | None = None,
) -> LossOutput:
    """`loss.method`'s loss (trainer_client/loss.py) of one micro-batch from the trainee's logits over
    `input_ids` (the batch's tokens), the Batch's masks and weights, and the reference: the Batch's
    precomputed log-probs or the reference model's logits over the same tokens."""
    dev = logits.device
    ref_lp = b.ref_logprobs[:, 1:].to(dev) if b.ref_logprobs is not None else None
    lg, tg, mask, w = shift_for_causal_lm(logits, input_ids, b.label_mask.to(dev), b.weights.to(dev))
    if ref_logits is not None:
        ref_logits = ref_logits[:, :-1]
        if loss.kl_estimator != "full":
            ref_lp, ref_logits = target_logprobs(ref_logits, tg), None
    return compute_loss(
        loss.method,
        lg,
        tg,
        mask,
        weights=w,
        keep=b.keep.to(dev),
        ref_logprobs=ref_lp,
        ref_logits=ref_logits,
        lambda_kl=loss.lambda_kl,
        estimator=cast(KLEstimator, loss.kl_estimator),  # checked by LossConfig
        rs_normalize=cast(RSNormalize, loss.rs_normalize),
    )
