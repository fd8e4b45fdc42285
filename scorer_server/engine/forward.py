"""The guard forward of the STAR engine: any mix of rows (Score items, live-moderation pushes) at once.

Each row attends to its own cache (the template head or its session's trunk) and to its new tokens under
a 4-D mask built from positions: a trunk token sees every earlier prefix position; a tail token sees the
prefix positions its cut shares and, causally, its own tail; on sliding-window layers a query also sees
no key `window` or more positions back. Nothing is copied per tail: every tail reads its row's trunk in
place. With one row that stores its trunk (a session alone in a forward), the new keys and values are
written straight into the session's buffers and attention reads a view of them; with several rows,
each row's cached keys are gathered once into the batch's key tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicLayer

from scorer_server.engine.caches import AttentionLayout, KVState, attention_layout
from scorer_server.engine.work import Row
from scorer_server.guards.guard import Guard


@dataclass(frozen=True)
class Forward:
    """What one forward produced."""

    hidden: torch.Tensor
    """Final hidden states [reads, H] at every row's reads, rows in order."""
    kv_bytes: int
    """Bytes of the keys and values attention read (all layers): what the forward held for them."""


@torch.inference_mode()
def forward_rows(guard: Guard, rows: list[Row], pad_id: int = 0) -> Forward:
    """One forward over `rows`; afterwards every storing row's cache holds its trunk."""
    layout = attention_layout(guard.model)
    device = guard.device
    new = [r.ids for r in rows]
    length = max(len(n) for n in new)
    ids = torch.tensor([n + [pad_id] * (length - len(n)) for n in new], device=device)
    pos_rows = [r.positions + [_last(r) + 1 + i for i in range(length - len(r.positions))] for r in rows]
    pos = torch.tensor(pos_rows, device=device)
    in_place = len(rows) == 1 and rows[0].store and rows[0].cache is not None
    spans = {
        False: [(0, _start(r)) for r in rows],
        True: [(_first_sliding(r, layout), _start(r)) for r in rows],
    }
    layers: list[DynamicLayer] = []
    for i, sliding in enumerate(layout.sliding):
        if in_place:
            layers.append(_InPlaceLayer(rows[0], i))
        else:
            layers.append(_GatheredLayer(rows, i, spans[sliding]))
    masks = {k: _mask(rows, pos_rows, spans[k], length, layout, k, guard.dtype) for k in _kinds(layout)}
    mask: Any = {
        name: masks[kind].to(device)
        for name, kind in (("full_attention", False), ("sliding_attention", True))
        if kind in masks
    }
    if not layout.per_type_masks:
        mask = next(iter(mask.values()))
    cache = Cache(layers=layers)  # type: ignore[arg-type]
    out = guard.model.base_model(
        input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True
    )
    hidden = out.last_hidden_state
    picked = [hidden[r, i] for r, row in enumerate(rows) for i in row.reads]
    kv_bytes = sum(2 * x.keys.numel() * x.keys.element_size() for x in layers if x.keys is not None)
    for r, row in enumerate(rows):
        _store(row, r, layers, in_place, layout)
    reads = torch.stack(picked) if picked else hidden.new_empty(0, hidden.shape[-1])
    return Forward(reads, kv_bytes)


def _kinds(layout: AttentionLayout) -> list[bool]:
    if layout.mixed:
        return [False, True]
    return [layout.window is not None]


def _start(row: Row) -> int:
    return row.start if row.cache is not None else 0


def _last(row: Row) -> int:
    return row.positions[-1] if row.positions else row.start - 1


def _first_sliding(row: Row, layout: AttentionLayout) -> int:
    """The first position a row's cache holds on sliding layers (they all drop the same keys)."""
    if row.cache is None or layout.window is None:
        return 0
    return row.cache.first_at(layout.sliding.index(True))


def _mask(
    rows: list[Row],
    pos_rows: list[list[int]],
    spans: list[tuple[int, int]],
    length: int,
    layout: AttentionLayout,
    sliding: bool,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Additive mask [B, 1, length, C + length]: row r's cached positions spans[r] in columns [0, C),
    left-aligned, its new tokens from column C on."""
    b = len(rows)
    cached = max(hi - lo for lo, hi in spans)
    qpos = torch.tensor(pos_rows)
    limit = torch.zeros(b, length, dtype=torch.long)  # prefix positions below this are visible
    tail = torch.full((b, length), -2)  # -1 trunk token, k tail k, -2 padding
    for r, row in enumerate(rows):
        n = len(row.trunk)
        limit[r, :n] = qpos[r, :n] + 1
        tail[r, :n] = -1
        at = n
        for k, t in enumerate(row.tails):
            limit[r, at : at + len(t.ids)] = t.shared
            tail[r, at : at + len(t.ids)] = k
            at += len(t.ids)
    kpos_cached = torch.tensor([[lo + j for j in range(cached)] for lo, _ in spans]).reshape(b, cached)
    held = torch.tensor([hi - lo for lo, hi in spans])
    cached_ok = (torch.arange(cached)[None, :] < held[:, None])[:, None, :]
    see_cached = cached_ok & (kpos_cached[:, None, :] < limit[:, :, None])
    prefix_key = (tail == -1)[:, None, :] & (qpos[:, None, :] < limit[:, :, None])
    causal = torch.ones(length, length, dtype=torch.bool).tril_()[None]
    same_tail = (tail[:, :, None] == tail[:, None, :]) & (tail >= 0)[:, :, None] & causal
    see_new = prefix_key | same_tail
    allowed = torch.cat([see_cached, see_new], dim=2)
    if sliding:
        assert layout.window is not None
        kpos = torch.cat([kpos_cached, qpos], dim=1)
        allowed &= (qpos[:, :, None] - kpos[:, None, :]) < layout.window
    pad = tail == -2  # padding sees itself only, so no row of the mask is all -inf
    idx = torch.arange(length)
    allowed[:, idx, cached + idx] |= pad
    mask = torch.zeros(b, 1, length, cached + length, dtype=dtype)
    return mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)


class _InPlaceLayer(DynamicLayer):
    """One storing row's cache layer: `update` writes the new keys and values into the row's state after
    its cache, in place, and hands attention a view (nothing is concatenated or gathered)."""

    def __init__(self, row: Row, index: int) -> None:
        super().__init__()
        assert row.cache is not None
        self._state, self._index, self._start = row.cache, index, row.start

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        self.keys, self.values = self._state.write(self._index, self._start, key_states, value_states)
        self.device, self.is_initialized = self.keys.device, True
        return self.keys, self.values


class _GatheredLayer(DynamicLayer):
    """A batch's cache layer: row r's cached keys (positions spans[r]) left-aligned in columns [0, C),
    zero-padded (the mask hides the padding), the new keys from column C on."""

    def __init__(self, rows: list[Row], index: int, spans: list[tuple[int, int]]) -> None:
        super().__init__()
        self._rows, self._index, self._spans = rows, index, spans
        self.cached = max(hi - lo for lo, hi in spans)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        b, heads, length, dim = key_states.shape
        c = self.cached
        keys = key_states.new_zeros(b, heads, c + length, dim)
        values = value_states.new_zeros(b, heads, c + length, value_states.shape[3])
        for r, (row, (lo, hi)) in enumerate(zip(self._rows, self._spans, strict=True)):
            if hi > lo:
                assert row.cache is not None
                k, v = row.cache.view(self._index, hi)
                keys[r, :, : hi - lo], values[r, :, : hi - lo] = k[0], v[0]
        keys[:, :, c:], values[:, :, c:] = key_states, value_states
        self.keys, self.values = keys, values
        self.device, self.is_initialized = keys.device, True
        return keys, values


def _store(row: Row, r: int, layers: list[DynamicLayer], in_place: bool, layout: AttentionLayout) -> None:
    """After the forward: a storing row's cache holds its trunk (in place already for a lone row)."""
    state = row.cache
    if state is None or not row.store:
        return
    n = len(row.trunk)
    if not in_place:
        for i, layer in enumerate(layers):
            assert isinstance(layer, _GatheredLayer) and layer.keys is not None and layer.values is not None
            c = layer.cached
            state.write(
                i, row.start, layer.keys[r : r + 1, :, c : c + n], layer.values[r : r + 1, :, c : c + n]
            )
    state.ids = state.ids[: row.start] + list(row.trunk)
    state.trim(layout.sliding)
    state.trunk_tokens += n
    state.tail_tokens += sum(len(t.ids) for t in row.tails)


__all__ = ["Forward", "KVState", "forward_rows"]
