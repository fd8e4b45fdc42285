"""The guard forward of the STAR engine: any mix of rows (Score items, live-moderation pushes) at once.

Each row attends to its own cache (the template head or its session's trunk) and to its new tokens. The
row is laid out as its trunk (padded to the batch's longest) and then its tails, packed into chunks that no
tail crosses; `attention.tree_attention` computes every query against the prefix (cache and trunk) and
each chunk against itself, under masks built from positions: a trunk token sees every earlier prefix
position; a tail token sees the prefix positions its cut shares and, causally, its own tail; on
sliding-window layers a query also sees no key `window` or more positions back. Nothing is copied per
tail: every tail reads its row's trunk in place. With one row that stores its trunk (a session alone in a
forward), the new keys and values are written straight into the session's buffers and attention reads a
view of them; with several rows, each row's cached keys are gathered once into the batch's key tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicLayer

from scorer_server.engine.attention import TreeAttention, tree_attention_on
from scorer_server.engine.caches import AttentionLayout, KVState, attention_layout
from scorer_server.engine.work import Row
from scorer_server.guards.guard import Guard

MIN_CHUNK = 32
"""Tokens in a chunk of tails at least (a chunk is as wide as the longest tail, rounded up to 8)."""


@dataclass(frozen=True)
class Forward:
    """What one forward produced."""

    hidden: torch.Tensor
    """Final hidden states [reads, H] at every row's reads, rows in order."""
    kv_bytes: int
    """Bytes of the keys and values attention read (all layers): what the forward held for them."""


@dataclass
class _Packed:
    """The batch laid out: per row and query slot, its token, position, how many prefix positions it
    sees (`limit`) and which tail it belongs to (-1 trunk, -2 padding)."""

    ids: list[list[int]]
    pos: list[list[int]]
    limit: list[list[int]]
    tail: list[list[int]]
    reads: list[list[int]]
    trunk: int
    chunks: int
    width: int


def _pack(rows: list[Row], pad_id: int) -> _Packed:
    longest = max([len(t.ids) for r in rows for t in r.tails] + [0])
    width = -(-max(longest, MIN_CHUNK) // 8) * 8 if longest else 0
    trunk = max(len(r.trunk) for r in rows)
    placed: list[list[list[int]]] = []  # per row, per chunk: the indices of its tails
    for r in rows:
        chunks: list[list[int]] = []
        used = width
        for k, t in enumerate(r.tails):
            if not t.ids:
                continue
            if used + len(t.ids) > width:
                chunks.append([])
                used = 0
            chunks[-1].append(k)
            used += len(t.ids)
        placed.append(chunks)
    n_chunks = max(len(c) for c in placed)
    length = trunk + n_chunks * width
    out = _Packed([], [], [], [], [], trunk, n_chunks, width)
    for r, chunks in zip(rows, placed, strict=True):
        n = len(r.trunk)
        ids, pos = r.trunk + [pad_id] * (length - n), list(range(r.start, r.start + n)) + [0] * (length - n)
        limit, tail = [p + 1 for p in pos[:n]] + [0] * (length - n), [-1] * n + [-2] * (length - n)
        where: dict[int, int] = {}
        for c, members in enumerate(chunks):
            at = trunk + c * width
            for k in members:
                t = r.tails[k]
                span = range(at, at + len(t.ids))
                ids[at : at + len(t.ids)] = t.ids
                pos[at : at + len(t.ids)] = range(t.shared, t.shared + len(t.ids))
                for i in span:
                    limit[i], tail[i] = t.shared, k
                at += len(t.ids)
                where[k] = at - 1
        reads = [where[k] if t.ids else t.shared - 1 - r.start for k, t in enumerate(r.tails)]
        for lst, v in (
            (out.ids, ids),
            (out.pos, pos),
            (out.limit, limit),
            (out.tail, tail),
            (out.reads, reads),
        ):
            lst.append(v)
    return out


@torch.inference_mode()
def forward_rows(guard: Guard, rows: list[Row], pad_id: int = 0) -> Forward:
    """One forward over `rows`; afterwards every storing row's cache holds its trunk."""
    layout = attention_layout(guard.model)
    device = guard.device
    packed = _pack(rows, pad_id)
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
    kinds = _kinds(layout)
    prefix = {k: _prefix_mask(rows, packed, spans[k], layout, k).to(device) for k in kinds}
    tails = {k: _tail_mask(packed, layout, k).to(device) for k in kinds}
    mask: Any = {
        name: prefix[kind]
        for name, kind in (("full_attention", False), ("sliding_attention", True))
        if kind in prefix
    }
    if not layout.per_type_masks:
        mask = next(iter(mask.values()))
    plan = TreeAttention(packed.trunk, packed.chunks, packed.width, tails, layout.sliding)
    cache = Cache(layers=layers)  # type: ignore[arg-type]
    with tree_attention_on(guard.model):
        out = guard.model.base_model(
            input_ids=torch.tensor(packed.ids, device=device),
            attention_mask=mask,
            position_ids=torch.tensor(packed.pos, device=device),
            cache=cache,
            use_cache=True,
            star_tree=plan,
        )
    hidden = out.last_hidden_state
    picked = [hidden[r, i] for r, reads in enumerate(packed.reads) for i in reads]
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


def _first_sliding(row: Row, layout: AttentionLayout) -> int:
    """The first position a row's cache holds on sliding layers (they all drop the same keys)."""
    if row.cache is None or layout.window is None:
        return 0
    return row.cache.first_at(layout.sliding.index(True))


def _prefix_mask(
    rows: list[Row], packed: _Packed, spans: list[tuple[int, int]], layout: AttentionLayout, sliding: bool
) -> torch.Tensor:
    """Part A's additive mask [B, 1, L, C + trunk] (float32, -inf hides): row r's cached positions
    spans[r] in columns [0, C), left-aligned, its trunk tokens after them."""
    b = len(rows)
    cached = max(hi - lo for lo, hi in spans)
    qpos, limit = torch.tensor(packed.pos), torch.tensor(packed.limit)
    kpos = torch.full((b, cached + packed.trunk), -1)
    for r, ((lo, hi), row) in enumerate(zip(spans, rows, strict=True)):
        kpos[r, : hi - lo] = torch.arange(lo, hi)
        kpos[r, cached : cached + len(row.trunk)] = torch.arange(row.start, row.start + len(row.trunk))
    allowed = (kpos[:, None, :] >= 0) & (kpos[:, None, :] < limit[:, :, None])
    if sliding:
        assert layout.window is not None
        allowed &= (qpos[:, :, None] - kpos[:, None, :]) < layout.window
    mask = torch.zeros(b, 1, qpos.shape[1], cached + packed.trunk)
    return mask.masked_fill_(~allowed[:, None], float("-inf"))


def _tail_mask(packed: _Packed, layout: AttentionLayout, sliding: bool) -> torch.Tensor:
    """Part B's additive mask [B x chunks, 1, W, W]: a tail token sees its own tail causally, padding
    sees itself."""
    b, c, w, t = len(packed.ids), packed.chunks, packed.width, packed.trunk
    tail = torch.tensor(packed.tail)[:, t:].reshape(b, c, w)
    pos = torch.tensor(packed.pos)[:, t:].reshape(b, c, w)
    causal = torch.ones(w, w, dtype=torch.bool).tril_()
    allowed = (tail[..., :, None] == tail[..., None, :]) & (tail >= 0)[..., :, None] & causal
    if sliding:
        assert layout.window is not None
        allowed &= (pos[..., :, None] - pos[..., None, :]) < layout.window
    idx = torch.arange(w)
    allowed[..., idx, idx] |= tail < 0
    mask = torch.zeros(b * c, 1, w, w)
    return mask.masked_fill_(~allowed.reshape(b * c, 1, w, w), float("-inf"))


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
