"""The frozen reference model's log-probs of the label tokens, precomputed once and cached."""

from __future__ import annotations

import copy
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
Compute = Callable[..., list[np.ndarray]]
"""How the log-probs of examples are computed: `reference_logprobs`' signature (a sharded run passes
one that splits the work across its processes)."""


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
    return label_logprobs(model, examples, pad_id, batch_size, device, autocast)


def label_logprobs(
    model: Any,
    examples: Sequence[Example],
    pad_id: int,
    batch_size: int,
    device: torch.device,
    autocast: Autocast = nullcontext,
) -> list[np.ndarray]:
    """`reference_logprobs` in the caller's grad mode (an FSDP model must not gather its parameters
    under inference mode: they would stay inference tensors the training step cannot write)."""
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
    compute: Compute = reference_logprobs,
) -> dict[int, np.ndarray]:
    """Reference log-probs for every example, from the cache or computed once by `compute` (under
    `autocast()`, whose `precision` name is part of the cache key) and cached."""
    key = model_key(model_path, model, precision)
    tkeys = [tokens_hash(e.input_ids) for e in examples]
    found = cache.get_ref(key, tkeys)
    missing = [i for i, a in enumerate(found) if a is None]
    if missing:
        todo = [examples[i] for i in missing]
        fresh = compute(model, todo, pad_id, batch_size, device, autocast)
        cache.put_ref(key, [(tkeys[i], a) for i, a in zip(missing, fresh, strict=True)])
        for i, a in zip(missing, fresh, strict=True):
            found[i] = a
    return {examples[i].index: a for i, a in enumerate(found) if a is not None}


class Reference:
    """The aligned model a dss loss pulls unsafe stretches towards, for star-train and StarDSSTrainer.

    One of: a frozen copy of the starting weights (full finetuning, `reference: auto`), the trainee with
    its LoRA adapter off (free), or the label tokens' log-probs precomputed once (`reference:
    precomputed`; no second model in memory). `logits` is called only for batches without
    precomputed log-probs."""

    def __init__(self, needed: bool, frozen: Any = None) -> None:
        self.needed = needed
        self.frozen = frozen
        self.logprobs: dict[int, np.ndarray] | None = None

    @classmethod
    def for_run(cls, model: Any, needed: bool, mode: str, peft: bool, given: Any = None) -> Reference:
        """Before any adapter is added: `given` (a reference model passed in), else a frozen copy of
        `model` when full finetuning needs a reference forward each step, else nothing."""
        frozen = given
        if needed and frozen is None and mode == "auto" and not peft:
            frozen = copy.deepcopy(model)
        if frozen is not None:
            frozen = frozen.eval().requires_grad_(False)
        return cls(needed, frozen)

    def to(self, device: Any) -> Reference:
        if self.frozen is not None:
            self.frozen = self.frozen.to(device)
        return self

    def precompute(
        self,
        model_path: str,
        model: Any,
        examples: Sequence[Example],
        pad_id: int,
        cache: ScoreCache | None,
        device: torch.device,
        batch_size: int,
        autocast: Autocast,
        precision: str,
        compute: Compute = reference_logprobs,
    ) -> None:
        """Compute (or read from `cache`) every example's reference log-probs with `model`, its LoRA
        adapter off if it has one, under the training step's `autocast`."""
        off = model.disable_adapter() if is_peft(model) else nullcontext()
        with off:
            self.logprobs = precompute_reference(
                model_path,
                model,
                examples,
                pad_id,
                cache or ScoreCache(":memory:"),
                device,
                batch_size,
                autocast=autocast,
                precision=precision,
                compute=compute,
            )

    @torch.no_grad()
    def logits(self, trainee: Any, ids: torch.Tensor, attn: torch.Tensor | None, autocast: Autocast) -> Any:
        """The reference's logits for a batch: the frozen copy's, or `trainee`'s (unwrapped from any
        distributed wrapper) with its adapter off."""
        with autocast():
            if self.frozen is not None:
                return self.frozen(input_ids=ids, attention_mask=attn, use_cache=False).logits
            with trainee.disable_adapter():
                return trainee(input_ids=ids, attention_mask=attn, use_cache=False).logits


def is_peft(model: Any) -> bool:
    """Whether `model` is a peft model (has adapters that can be switched off)."""
    from peft import PeftModel

    return isinstance(model, PeftModel)
