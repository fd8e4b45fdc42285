"""Plain forwards, one whole prompt per row: the per-cut definition of STAR (the oracle every layout is
tested against, and the benchmarks' baseline) and the whole-response verdicts of Judge."""

from __future__ import annotations

import torch

from scorer_server.guards.guard import Guard


@torch.inference_mode()
def forward_prompts(guard: Guard, prompts: list[list[int]], pad_id: int = 0) -> torch.Tensor:
    """Each prompt as its own sequence, left-padded, plain `model(...)`: the logits [N, V] (float32) at
    the last position."""
    length = max(len(p) for p in prompts)
    device = guard.device
    ids = torch.tensor([[pad_id] * (length - len(p)) + p for p in prompts], device=device)
    attn = torch.tensor([[0] * (length - len(p)) + [1] * len(p) for p in prompts], device=device)
    pos = (attn.cumsum(-1) - 1).clamp_min(0)
    out = guard.model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False, logits_to_keep=1)
    return out.logits[:, -1].float()
