"""Guard forward passes: the one-pass tree layout and the plain per-cut baseline."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from scorer_server.engine.head_cache import HeadCache
from scorer_server.engine.plan import WorkItem
from scorer_server.guards.guard import Guard


@dataclass
class _Row:
    ids: list[int]
    pos: list[int]
    tails: list[tuple[int, int, int]]
    """(start in row, length, shared trunk tokens) for each tail."""
    reads: list[int]
    """Row position of each cut's verdict logits, in the item's cut order."""


def _layout(item: WorkItem) -> _Row:
    plan = item.plan
    trunk_len = plan.trunk_len(item.cut_indices)
    ids = list(plan.trunk[:trunk_len])
    pos = list(range(trunk_len))
    tails: list[tuple[int, int, int]] = []
    reads: list[int] = []
    for i in item.cut_indices:
        tail = plan.tails[i]
        if not tail:
            reads.append(plan.read_position(i))
            continue
        start = len(ids)
        ids.extend(tail)
        pos.extend(range(plan.shared[i], plan.shared[i] + len(tail)))
        tails.append((start, len(tail), plan.shared[i]))
        reads.append(start + len(tail) - 1)
    return _Row(ids, pos, tails, reads)


def sliding_window_of(model: Any) -> tuple[int | None, bool]:
    """(window, whether the model takes a per-layer-type mask dict)."""
    cfg = model.config
    window = getattr(cfg, "sliding_window", None)
    layer_types = getattr(cfg, "layer_types", None) or []
    if "sliding_attention" in layer_types:
        return window, True
    if window is not None and getattr(cfg, "use_sliding_window", True):
        return window, False
    return None, False


def build_masks(rows: list[_Row], length: int, model: Any, dtype: torch.dtype) -> Any:
    """Additive 4-D masks [B, 1, T, T]: trunk causal, each tail on its shared prefix and itself.

    Memory is B x T x T for rows of at most T tokens: the row-token cap bounds it, never the whole
    batch's token count squared.
    """
    b = len(rows)
    allowed = torch.zeros(b, length, length, dtype=torch.bool)
    causal = torch.ones(length, length, dtype=torch.bool).tril_()
    for r, row in enumerate(rows):
        trunk = len(row.ids) - sum(t[1] for t in row.tails)
        allowed[r, :trunk, :trunk] = causal[:trunk, :trunk]
        for start, n, shared in row.tails:
            allowed[r, start : start + n, :shared] = True
            allowed[r, start : start + n, start : start + n] = causal[:n, :n]
        pad = torch.arange(len(row.ids), length)
        allowed[r, pad, pad] = True  # padding attends to itself only, so no row is all -inf
    window, as_dict = sliding_window_of(model)
    neg = torch.finfo(dtype).min
    full = torch.zeros(b, 1, length, length, dtype=dtype).masked_fill_(~allowed[:, None], neg)
    if window is None:
        return full
    pos = torch.tensor([row.pos + [0] * (length - len(row.pos)) for row in rows])
    near = (pos[:, :, None] - pos[:, None, :]) < window
    sliding_allowed = allowed & near
    idx = torch.arange(length)
    sliding_allowed[:, idx, idx] = True
    sliding = torch.zeros_like(full).masked_fill_(~sliding_allowed[:, None], neg)
    if as_dict:
        return {"full_attention": full, "sliding_attention": sliding}
    return sliding


@torch.inference_mode()
def forward_items(guard: Guard, items: list[WorkItem], pad_id: int = 0) -> torch.Tensor:
    """One forward over the rows of `items`: the final hidden state [N, H] at each verdict position, the
    items' cuts in order (each item's in its `cut_indices` order)."""
    rows = [_layout(it) for it in items]
    length = max(len(r.ids) for r in rows)
    device = guard.device
    ids = torch.tensor([r.ids + [pad_id] * (length - len(r.ids)) for r in rows], device=device)
    pos = torch.tensor([r.pos + [0] * (length - len(r.pos)) for r in rows], device=device)
    mask = build_masks(rows, length, guard.model, guard.dtype)
    mask = {k: v.to(device) for k, v in mask.items()} if isinstance(mask, dict) else mask.to(device)
    out = guard.model.base_model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)
    hidden = out.last_hidden_state
    flat_rows = [r for r, row in enumerate(rows) for _ in row.reads]
    flat_pos = [p for row in rows for p in row.reads]
    return hidden[flat_rows, flat_pos]


@dataclass
class _TailRow:
    item: int
    ids: list[int]
    pos: list[int]
    spans: list[tuple[int, int, int]]
    """(start in row, length, shared trunk tokens) for each tail."""


def _tail_rows(
    items: list[WorkItem], rows_per_item: int
) -> tuple[list[_TailRow], list[list[tuple[int, int]]]]:
    """Group each item's tails into at most `rows_per_item` rows; per item, where each cut is read:
    (-1, trunk position) or (tail row, position in that row)."""
    rows: list[_TailRow] = []
    reads: list[list[tuple[int, int]]] = []
    for k, it in enumerate(items):
        plan = it.plan
        with_tail = [i for i in it.cut_indices if plan.tails[i]]
        per_row = max(1, -(-len(with_tail) // rows_per_item))
        where: dict[int, tuple[int, int]] = {}
        for g in range(0, len(with_tail), per_row):
            row = _TailRow(k, [], [], [])
            for i in with_tail[g : g + per_row]:
                tail, shared = plan.tails[i], plan.shared[i]
                row.spans.append((len(row.ids), len(tail), shared))
                row.ids.extend(tail)
                row.pos.extend(range(shared, shared + len(tail)))
                where[i] = (len(rows), len(row.ids) - 1)
            rows.append(row)
        reads.append([where.get(i, (-1, plan.read_position(i))) for i in it.cut_indices])
    return rows, reads


def supports_prefix_cache(model: Any) -> bool:
    """Whether the two-stage layout applies: no sliding-window layers (their caches drop old keys)."""
    return sliding_window_of(model)[0] is None


@torch.inference_mode()
def forward_items_prefix_cache(
    guard: Guard,
    items: list[WorkItem],
    pad_id: int = 0,
    rows_per_item: int = 8,
    head: HeadCache | None = None,
) -> torch.Tensor:
    """The same hidden states as `forward_items`, computed in two stages that skip the masked-out work.

    Stage 1 runs every item's trunk as a plain causal forward and keeps its keys and values; with a
    `head` cache, the trunks start from the guard's cached template head and only the rest is computed.
    Stage 2 runs the tails, grouped into a few rows per item, against a copy of their item's trunk
    cache: a tail attends to the first `shared` trunk keys and causally to itself. Attention then costs
    about tails x (shared + tail) instead of (trunk + tails)^2 per row, and the trunk is computed once.
    """
    from transformers import DynamicCache

    model, device = guard.model.base_model, guard.device
    trunks = [it.plan.trunk[: it.plan.trunk_len(it.cut_indices)] for it in items]
    t_len = max(len(t) for t in trunks)
    m = 0
    if head is not None:
        min_shared = min(it.plan.shared[i] for it in items for i in it.cut_indices)
        m = head.usable(trunks, min_shared)
    cache = head.cache_for(guard.model.config, m, len(items)) if head is not None and m else None
    if cache is None:
        cache = DynamicCache(config=guard.model.config)
    ids = torch.tensor([t[m:] + [pad_id] * (t_len - len(t)) for t in trunks], device=device)
    attn = torch.tensor([[1] * len(t) + [0] * (t_len - len(t)) for t in trunks], device=device)
    pos = torch.arange(m, t_len, device=device).expand(len(items), -1)
    trunk_out = model(input_ids=ids, attention_mask=attn, position_ids=pos, cache=cache, use_cache=True)
    trunk_hidden = trunk_out.last_hidden_state  # positions m .. t_len - 1

    rows, reads = _tail_rows(items, rows_per_item)
    tail_hidden = trunk_hidden  # replaced below when any cut has a tail
    if rows:
        q_len = max(len(r.ids) for r in rows)
        allowed = torch.zeros(len(rows), q_len, t_len + q_len, dtype=torch.bool)
        causal = torch.ones(q_len, q_len, dtype=torch.bool).tril_()
        for r, row in enumerate(rows):
            for start, n, shared in row.spans:
                allowed[r, start : start + n, :shared] = True
                allowed[r, start : start + n, t_len + start : t_len + start + n] = causal[:n, :n]
            pad = torch.arange(len(row.ids), q_len)
            allowed[r, pad, t_len + pad] = True
        mask = torch.zeros(len(rows), 1, q_len, t_len + q_len, dtype=guard.dtype)
        mask.masked_fill_(~allowed[:, None], torch.finfo(guard.dtype).min)
        cache.reorder_cache(torch.tensor([r.item for r in rows], device=device))  # type: ignore[arg-type]
        tail_ids = torch.tensor([r.ids + [pad_id] * (q_len - len(r.ids)) for r in rows], device=device)
        tail_pos = torch.tensor([r.pos + [0] * (q_len - len(r.pos)) for r in rows], device=device)
        tail_out = model(
            input_ids=tail_ids,
            attention_mask=mask.to(device),
            position_ids=tail_pos,
            cache=cache,
            use_cache=True,
        )
        tail_hidden = tail_out.last_hidden_state
    picked = []
    for k, item_reads in enumerate(reads):
        for where, p in item_reads:
            picked.append(trunk_hidden[k, p - m] if where < 0 else tail_hidden[where, p])
    return torch.stack(picked)


@torch.inference_mode()
def forward_prompts(guard: Guard, prompts: list[list[int]], pad_id: int = 0) -> torch.Tensor:
    """The per-cut definition: each prompt as its own sequence, left-padded, plain `model(...)` logits
    [N, V] (float32) at the last position. Used as the test oracle and the benchmark baseline."""
    length = max(len(p) for p in prompts)
    device = guard.device
    ids = torch.tensor([[pad_id] * (length - len(p)) + p for p in prompts], device=device)
    attn = torch.tensor([[0] * (length - len(p)) + [1] * len(p) for p in prompts], device=device)
    pos = (attn.cumsum(-1) - 1).clamp_min(0)
    out = guard.model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False, logits_to_keep=1)
    return out.logits[:, -1].float()
