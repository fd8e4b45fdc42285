"""Keys and values a live-moderation session keeps, and one batched forward over many sessions' tails.

Each session holds the guard's keys and values for the stable trunk of its prompt (`KVState`). A cut
costs only the tokens after that trunk: `forward_tails` runs the new tokens of any number of sessions
in one forward, each row attending to its own session's cached keys (left-aligned and padded to the
longest) and causally to its own new tokens, and reads the verdict logits at each row's last token.
The keys and values of the tokens a cut marks stable are appended to the session's state; the rest
(the template suffix after the cut) are dropped again. The scores equal one plain forward per cut.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from scorer_server.engine.forward import sliding_window_of
from scorer_server.engine.plan import common_prefix
from scorer_server.guards.head import verdict_logit_diff
from scorer_server.guards.loader import Guard


@dataclass(eq=False)
class KVState:
    """One session's cached trunk: its token ids and, per layer, keys and values [1, kv_heads, n, d]."""

    ids: list[int] = field(default_factory=list)
    layers: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    trunk_tokens: int = 0
    """Trunk tokens computed over the session's life (recomputation after eviction included)."""
    tail_tokens: int = 0
    """Tail tokens computed (the tokens after each cut's stable point, suffix included)."""
    rollbacks: int = 0
    evictions: int = 0

    @property
    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.layers)

    def evict(self) -> None:
        """Drop the keys and values; the next cut recomputes the trunk from the start (still exact)."""
        if self.ids:
            self.evictions += 1
        self.ids, self.layers = [], []

    def roll_back(self, ids: list[int]) -> None:
        """Keep only the longest prefix of the cached trunk that `ids` begins with."""
        keep = common_prefix(self.ids, ids)
        if keep == len(self.ids):
            return
        self.rollbacks += 1
        self.ids = self.ids[:keep]
        # clone: a view would keep the whole old buffer alive and the byte count would lie
        self.layers = (
            [(k[:, :, :keep].clone(), v[:, :, :keep].clone()) for k, v in self.layers] if keep else []
        )


@dataclass(frozen=True)
class TailJob:
    """One cut of one session: its whole per-cut prompt and how many leading tokens stay cached."""

    state: KVState
    ids: list[int]
    stable: int
    """At most len(ids) - 1: the last token is always computed (its hidden state is the verdict's)."""


@torch.inference_mode()
def forward_tails(guard: Guard, jobs: list[TailJob], pad_id: int = 0) -> list[float]:
    """logit(safe) - logit(unsafe) at the end of each job's prompt, in one forward; each job's state
    then holds exactly `ids[:stable]`. The jobs' states must be distinct objects."""
    for job in jobs:
        job.state.roll_back(job.ids[: job.stable])
    starts = [len(job.state.ids) for job in jobs]
    new = [job.ids[s:] for job, s in zip(jobs, starts, strict=True)]
    cached, length = max(starts), max(len(n) for n in new)
    device, model = guard.device, guard.model
    cache = _padded_cache([job.state for job in jobs], cached)
    ids = torch.tensor([n + [pad_id] * (length - len(n)) for n in new], device=device)
    pos = torch.tensor([list(range(s, s + length)) for s in starts], device=device)
    mask: Any = None  # one session alone: plain causal attention over its cache, the model's own path
    if len(jobs) > 1:
        mask = _mask(starts, [len(n) for n in new], cached, length, model, guard.dtype)
        mask = {k: v.to(device) for k, v in mask.items()} if isinstance(mask, dict) else mask.to(device)
    out = model.base_model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True)
    last = out.last_hidden_state[torch.arange(len(jobs)), torch.tensor([len(n) - 1 for n in new])]
    diffs = verdict_logit_diff(guard, last).float().tolist()
    for row, (job, start) in enumerate(zip(jobs, starts, strict=True)):
        keep = job.stable - start
        if len(jobs) == 1:  # the forward already concatenated cache and new keys: keep a view, no copy
            job.state.layers = [
                (la.keys[:, :, : job.stable], la.values[:, :, : job.stable]) for la in cache.layers
            ]
        else:
            job.state.layers = [
                _append(
                    job.state.layers[i] if job.state.layers else None,
                    layer.keys,
                    layer.values,
                    row,
                    cached,
                    keep,
                )
                for i, layer in enumerate(cache.layers)
            ]
        job.state.ids = list(job.ids[: job.stable])
        job.state.trunk_tokens += keep
        job.state.tail_tokens += len(job.ids) - job.stable
    return diffs


def _padded_cache(states: list[KVState], cached: int) -> Any:
    """A DynamicCache whose row i holds state i's keys and values, left-aligned, zero-padded to
    `cached` (the padding is masked out). One session alone is used as it is, without a copy."""
    from transformers import DynamicCache

    cache = DynamicCache()  # plain full-attention layers: the masks below say what each row sees
    if cached == 0:
        return cache
    ref = next(s.layers for s in states if s.layers)
    for layer, (k0, v0) in enumerate(ref):
        if len(states) == 1:
            k, v = k0, v0
        else:
            k = k0.new_zeros(len(states), k0.shape[1], cached, k0.shape[3])
            v = v0.new_zeros(len(states), v0.shape[1], cached, v0.shape[3])
            for row, s in enumerate(states):
                if s.layers:
                    n = len(s.ids)
                    k[row, :, :n] = s.layers[layer][0][0]
                    v[row, :, :n] = s.layers[layer][1][0]
        cache.update(k, v, layer)
    return cache


def _mask(
    starts: list[int], lengths: list[int], cached: int, length: int, model: Any, dtype: torch.dtype
) -> Any:
    """Additive masks [B, 1, length, cached + length]: row i's new tokens see its first starts[i]
    cached keys and, causally, each other; padding sees itself only (no row is all -inf)."""
    allowed = torch.zeros(len(starts), length, cached + length, dtype=torch.bool)
    causal = torch.ones(length, length, dtype=torch.bool).tril_()
    for row, (start, n) in enumerate(zip(starts, lengths, strict=True)):
        allowed[row, :n, :start] = True
        allowed[row, :n, cached : cached + n] = causal[:n, :n]
        pad = torch.arange(n, length)
        allowed[row, pad, cached + pad] = True
    full = torch.zeros(len(starts), 1, length, cached + length, dtype=dtype)
    full.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
    as_dict = sliding_window_of(model)[1]
    # Sessions on sliding-window guards are capped below the window (see IncrementalSession), where
    # sliding and full attention are the same mask.
    return {"full_attention": full, "sliding_attention": full} if as_dict else full


def _append(
    old: tuple[torch.Tensor, torch.Tensor] | None,
    keys: torch.Tensor,
    values: torch.Tensor,
    row: int,
    cached: int,
    keep: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A session's layer after a cut: its old keys and values plus the first `keep` new ones of `row`."""
    k_new = keys[row : row + 1, :, cached : cached + keep]
    v_new = values[row : row + 1, :, cached : cached + keep]
    if old is None:
        return k_new.clone(), v_new.clone()
    return torch.cat([old[0], k_new], dim=2), torch.cat([old[1], v_new], dim=2)
