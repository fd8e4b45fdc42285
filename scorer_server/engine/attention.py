"""Attention for rows of a trunk and many tails, without the attention no token pays for.

A row's queries are its new trunk tokens, then its tails packed into chunks of `width` tokens (a tail never
crosses a chunk). Every query may attend to the row's prefix (its cache and its trunk, within the limits
of the mask); a tail query also attends, causally, to its own tail, which lies in its own chunk. So the
scores are computed in two parts and merged exactly by their log-sum-exps (as cascade attention does):

- part A: every query against the prefix keys, [L x (C + T)], under the row's mask;
- part B: each chunk's queries against the same chunk's keys, [W x W] per chunk, under a block mask.

A dense masked attention over the whole row would also compute every tail against every other tail and
every trunk token against every tail, (T + Q) x (C + T + Q) against (T + Q) x (C + T) + Q x W here: with
many cuts (Q large), most of the dense work. Keys and values are read where they are: the prefix from
the row's cache (a view for a session alone in a forward), nothing is copied per tail or per chunk.
Grouped-query heads are handled by grouping the queries, not by repeating the keys.

On CPU both parts run in torch's fused flash-attention kernel, which also returns the log-sum-exps.
Elsewhere (and with Gemma 2's soft-capping) the scores are computed in float32 a block of queries at a
time, so the transient memory is bounded by the block, not by the row's length squared.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from transformers.modeling_utils import AttentionInterface

NAME = "star_tree"
QUERY_BLOCK = 512
"""Queries per block of part A: bounds the float32 scores a layer holds at once."""


@dataclass(frozen=True)
class TreeAttention:
    """What the attention of one forward needs besides the model's own arguments."""

    trunk: int
    """Query positions [0, trunk) are trunk tokens (padded): part A only."""
    chunks: int
    width: int
    """The tail region, [trunk, trunk + chunks x width), is `chunks` chunks of `width` tokens."""
    tail_masks: dict[bool, torch.Tensor]
    """Part B's additive masks [B x chunks, 1, width, width] (float32, -inf hides), per sliding kind."""
    sliding: tuple[bool, ...]
    """Per layer: whether it is a sliding-window layer (which part-B mask it takes)."""


def tree_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    softcap: float | None = None,
    star_tree: TreeAttention | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """The attention function transformers calls in each layer (registered as `star_tree`).

    `attention_mask` is part A's additive mask [B, 1, L, C + trunk] (-inf hides) for this layer's kind;
    `star_tree` describes the tail chunks. Returns [B, L, heads, head_dim]."""
    if star_tree is None or attention_mask is None:
        raise RuntimeError("star_tree attention runs only inside forward_rows")
    plan = star_tree
    b, heads, _, dim = query.shape
    group = heads // key.shape[1]
    scale = scaling if scaling is not None else dim**-0.5
    prefix = attention_mask.shape[-1]
    out, lse = _attend_grouped(
        query, key[:, :, :prefix], value[:, :, :prefix], attention_mask, scale, softcap
    )
    if plan.chunks:
        k, v = _repeat(key[:, :, prefix:], group), _repeat(value[:, :, prefix:], group)
        t, c, w = plan.trunk, plan.chunks, plan.width
        q_b = _chunked(query[:, :, t:], c, w)
        k_b, v_b = _chunked(k, c, w), _chunked(v, c, w)
        mask_b = plan.tail_masks[plan.sliding[module.layer_idx]]
        o_b, lse_b = _attend(q_b, k_b, v_b, mask_b, scale, softcap)
        o_b = o_b.reshape(b, c, heads, w, -1).permute(0, 2, 1, 3, 4).reshape(b, heads, c * w, -1)
        lse_b = lse_b.reshape(b, c, heads, w).permute(0, 2, 1, 3).reshape(b, heads, c * w)
        l_a = lse[:, :, t:]
        top = torch.maximum(l_a, lse_b)  # part B always sees the query itself: finite
        w_a, w_b = torch.exp(l_a - top)[..., None], torch.exp(lse_b - top)[..., None]
        merged = (out[:, :, t:].float() * w_a + o_b.float() * w_b) / (w_a + w_b)
        out = torch.cat([out[:, :, :t], merged.to(out.dtype)], dim=2)
    return out.transpose(1, 2).contiguous(), None


def _attend_grouped(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float, softcap: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`_attend` for grouped-query heads: the keys repeated per query head (what the model's own
    attention does) when that is the smaller copy, else the queries of a key head stacked as one longer
    sequence and the mask repeated along it (a session's few new tokens over a long cache)."""
    b, heads, length, dim = q.shape
    kv_heads = k.shape[1]
    group = heads // kv_heads
    if group == 1 or group * length >= 2 * heads * dim:  # mask copy: G x L x K; keys: 2 x H x K x d
        return _attend(q, _repeat(k, group), _repeat(v, group), mask, scale, softcap)
    stacked = q.reshape(b, kv_heads, group * length, dim)
    out, lse = _attend(stacked, k, v, mask.repeat(1, 1, group, 1), scale, softcap)
    return out.reshape(b, heads, length, -1), lse.reshape(b, heads, length)


def _repeat(x: torch.Tensor, group: int) -> torch.Tensor:
    """Grouped-query keys or values repeated to one per query head (what the model's own attention
    does)."""
    if group == 1:
        return x
    b, kv, n, d = x.shape
    return x[:, :, None].expand(b, kv, group, n, d).reshape(b, kv * group, n, d)


def _chunked(x: torch.Tensor, chunks: int, width: int) -> torch.Tensor:
    """[B, H, chunks x width, d] as [B x chunks, H, width, d]: each chunk attends within itself."""
    b, h, _, d = x.shape
    return x.reshape(b, h, chunks, width, d).transpose(1, 2).reshape(b * chunks, h, width, d)


def _attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float, softcap: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T x scale + mask) v and the log-sum-exp of each query's scores (float32); a query
    that sees no key gets zeros and -inf, so it takes its value from the other part.

    On CPU, torch's fused flash-attention kernel (which returns the log-sum-exp); elsewhere, and with
    Gemma 2's soft-capping, the scores in float32, a block of queries at a time."""
    seen = torch.isfinite(mask).any(-1)  # [B, 1, L]
    if k.shape[2] == 0:
        zeros = q.new_zeros(*q.shape[:3], v.shape[-1])
        return zeros, torch.full(q.shape[:3], float("-inf"), device=q.device)
    if q.device.type == "cpu" and not softcap:
        fused = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
        out, lse = fused(q, k, v, 0.0, False, attn_mask=mask.to(q.dtype), scale=scale)
    else:
        out = q.new_empty(*q.shape[:3], v.shape[-1])
        lse = torch.empty(q.shape[:3], dtype=torch.float32, device=q.device)
        kt, vf = k.float().transpose(-1, -2), v.float()
        for lo in range(0, q.shape[2], QUERY_BLOCK):
            hi = min(q.shape[2], lo + QUERY_BLOCK)
            # in place on the block's one [B, H, block, K] buffer: the same operations, in the same
            # order, as the out-of-place formula, without a new buffer per step
            scores = torch.matmul(q[:, :, lo:hi].float(), kt).mul_(scale)
            _cap_(scores, softcap).add_(mask[..., lo:hi, :])
            top = scores.amax(-1, keepdim=True)
            top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
            p = scores.sub_(top).exp_()
            total = p.sum(-1, keepdim=True)
            out[:, :, lo:hi] = torch.matmul(p, vf).div_(total.clamp_min(torch.finfo(torch.float32).tiny))
            lse[:, :, lo:hi] = (top + torch.log(total)).squeeze(-1)
    return out, torch.where(seen, lse.float(), float("-inf"))


def _cap_(scores: torch.Tensor, softcap: float | None) -> torch.Tensor:
    """Gemma 2's attention logit soft-capping (tanh(s / cap) x cap, as its own attention applies it),
    in place."""
    if softcap:
        scores.div_(softcap).tanh_().mul_(softcap)
    return scores


AttentionInterface.register(NAME, tree_attention)


@contextlib.contextmanager
def tree_attention_on(model: Any) -> Iterator[None]:
    """Run `model`'s layers with `tree_attention` inside the block (one forward thread per guard: the
    local backend runs every forward of a guard on one thread)."""
    config = model.config
    before = config._attn_implementation
    config._attn_implementation = NAME
    try:
        yield
    finally:
        config._attn_implementation = before
