"""The guard's verdict head: logit(safe) - logit(unsafe) from two rows of the output embedding.

The engine reads only these two rows instead of the whole vocabulary; `check_head` proves at load time
that this reproduces the model's own logits for the guard's architecture.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from scorer_server.guards.guard import Guard


def _postprocess(cfg: Any, logits: torch.Tensor) -> torch.Tensor:
    """The post-processing the families' own heads apply to logits (checked at load by `check_head`)."""
    if getattr(cfg, "logits_scaling", None):
        logits = logits / cfg.logits_scaling
    if getattr(cfg, "logit_scale", None):
        logits = logits * cfg.logit_scale
    cap = getattr(cfg, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits.float()


def verdict_logits(guard: Guard, hidden: torch.Tensor) -> torch.Tensor:
    """The verdict classes' logits [N, K] (float32) from final hidden states [N, H], using only their
    rows of the output embedding."""
    return head_logits(guard, hidden, list(guard.class_ids or (guard.safe_id, guard.unsafe_id)))


def head_logits(guard: Guard, hidden: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """The logits [N, len(rows)] (float32) of the token ids `rows` from final hidden states [N, H],
    computing only those rows of the output embedding."""
    head = guard.model.get_output_embeddings()
    w = head.weight[rows]
    logits = hidden.to(w.dtype) @ w.T
    if getattr(head, "bias", None) is not None:
        logits = logits + head.bias[rows]
    return _postprocess(guard.model.config, logits)


def class_p_safe(guard: Guard, logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """P(safe) [N] from the verdict classes' logits [N, K]: the softmax at `temperature` summed over the
    classes that count as safe (with two classes, sigmoid((safe - unsafe) / T))."""
    safe = torch.tensor(guard.safe_classes or (True, False), device=logits.device)
    probs = torch.softmax(logits.double() / temperature, dim=-1)
    return probs[:, safe].sum(-1)


def verdict_logit_diff(guard: Guard, hidden: torch.Tensor) -> torch.Tensor:
    """logit(safe) - logit(unsafe) from final hidden states [N, H] (the first two verdict classes)."""
    logits = verdict_logits(guard, hidden)
    return logits[:, 0] - logits[:, 1]


def full_logits(guard: Guard, hidden: torch.Tensor) -> torch.Tensor:
    """The whole vocabulary's logits [N, V] (float32) at the given final hidden states [N, H] only."""
    head = guard.model.get_output_embeddings()
    return _postprocess(guard.model.config, head(hidden.to(head.weight.dtype)))


@torch.inference_mode()
def check_head(guard: Guard, prompt: list[int]) -> float:
    """Gap between the two-row verdict head and the model's full logits at the end of `prompt`.

    A guard whose head post-processes logits in a way `verdict_logit_diff` does not reproduce fails
    this check at load time instead of giving silently wrong scores.
    """
    ids = torch.tensor([prompt], device=guard.device)
    hidden = guard.model.base_model(input_ids=ids, use_cache=False).last_hidden_state[:, -1]
    fast = verdict_logits(guard, hidden)[0]
    logits = guard.model(input_ids=ids, use_cache=False, logits_to_keep=1).logits[0, -1].float()
    full = logits[list(guard.class_ids or (guard.safe_id, guard.unsafe_id))]
    return float((fast - full).abs().max().item())
