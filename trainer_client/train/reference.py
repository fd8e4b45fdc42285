"""The frozen reference model's log-probs of the label tokens, precomputed once and cached."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer_client.data import Example, collate
from trainer_client.loss import target_logprobs
from trainer_client.scoring.cache import ScoreCache, tokens_hash

Autocast = Callable[[], AbstractContextManager[Any]]
"""A factory of the compute-precision context the training step runs its forwards in (accelerate's
`Accelerator.autocast`); `nullcontext` when there is no mixed precision."""


def model_key(path: str, model: Any, precision: str = "no") -> str:
    """Identity of the reference model for the log-prob cache: config, weights' dtype, compute
    precision (`mixed_precision`) and weight file heads."""
    h = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode())
    h.update(str(next(model.parameters()).dtype).encode())
    h.update(f"autocast={precision}".encode())
    for f in sorted(Path(path).glob("*.safetensors")):
        h.update(f.name.encode() + str(f.stat().st_size).encode())
        with f.open("rb") as fh:
            h.update(fh.read(1 << 20))
    return h.hexdigest()[:16]


@torch.inference_mode()
def reference_logprobs(
    model: Any,
    examples: Sequence[Example],
    pad_id: int,
    batch_size: int,
    device: torch.device,
    autocast: Autocast = nullcontext,
) -> list[np.ndarray]:
    """Each example's reference log-probs of its label tokens (in label-position order), with the
    forwards run under `autocast()` (pass the training step's, so step 0's KL is zero)."""
    out: list[np.ndarray] = []
    was_training = model.training
    model.eval()
    for start in range(0, len(examples), batch_size):
        exs = examples[start : start + batch_size]
        b = collate(exs, pad_id)
        with autocast():
            logits = model(
                input_ids=b.input_ids.to(device), attention_mask=b.attention_mask.to(device)
            ).logits
        lp = target_logprobs(logits[:, :-1], b.input_ids[:, 1:].to(device)).float().cpu()
        for r, e in enumerate(exs):
            pos = torch.tensor(e.label_positions) - 1
            out.append(lp[r, pos].numpy().astype(np.float32))
    model.train(was_training)
    return out


def precompute_reference(
    model_path: str,
    model: Any,
    examples: Sequence[Example],
    pad_id: int,
    cache: ScoreCache,
    device: torch.device,
    batch_size: int,
    autocast: Autocast = nullcontext,
    precision: str = "no",
) -> dict[int, np.ndarray]:
    """Reference log-probs for every example, from the cache or computed once (under `autocast()`, whose
    `precision` name is part of the cache key) and cached."""
    key = model_key(model_path, model, precision)
    tkeys = [tokens_hash(e.input_ids) for e in examples]
    found = cache.get_ref(key, tkeys)
    missing = [i for i, a in enumerate(found) if a is None]
    if missing:
        todo = [examples[i] for i in missing]
        fresh = reference_logprobs(model, todo, pad_id, batch_size, device, autocast)
        cache.put_ref(key, [(tkeys[i], a) for i, a in zip(missing, fresh, strict=True)])
        for i, a in zip(missing, fresh, strict=True):
            found[i] = a
    return {examples[i].index: a for i, a in enumerate(found) if a is not None}
