"""Keys and values a live-moderation session keeps, and one batched forward over many sessions' tails.

Each session holds the guard's keys and values for the stable trunk of its prompt (`KVState`). A cut
costs only the tokens after that trunk: `forward_tails_hidden` runs any number of sessions in one
forward, one row each, every row attending to its own session's cached keys (left-aligned and padded
to the longest). A row holds the session's new trunk tokens once and then one tail per cut of the push
(each tail seeing the trunk tokens its prompt shares and, causally, itself), and the verdict hidden
state is read at each tail's last token. The trunk's keys and values are written into the session's
buffers after its cache; the tails' (template suffixes) stay in the scratch space past the trunk, which
the next forward overwrites. One session alone writes its new keys there during the forward and
attention reads a view of its buffers: nothing is concatenated, so a cut's cost does not grow with a
copy of the cache. The scores equal one plain forward per cut.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicLayer

from scorer_server.engine.forward import sliding_window_of
from scorer_server.engine.head_cache import HeadCache
from scorer_server.engine.plan import common_prefix
from scorer_server.guards.guard import Guard
from scorer_server.guards.head import verdict_logit_diff

GROWTH_TOKENS = 32
"""A session's buffers grow by at least this many tokens (or an eighth of their size) at a time: slack
is memory the budget pays for, and a growth copies the cache once."""


@dataclass(eq=False)
class KVState:
    """One session's cached trunk: its token ids and, per layer, key and value buffers
    [1, kv_heads, capacity, head_dim] whose first `len(ids)` positions hold the trunk's keys and values.

    Positions past the trunk are scratch: a cut's tail is written there during its forward (attention
    reads a view of the buffer, nothing is concatenated) and overwritten by the next cut."""

    ids: list[int] = field(default_factory=list)
    buffers: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    trunk_tokens: int = 0
    """Trunk tokens computed over the session's life (recomputation after eviction included)."""
    tail_tokens: int = 0
    """Tail tokens computed (the tokens after each cut's stable point, suffix included)."""
    rollbacks: int = 0
    evictions: int = 0

    @property
    def nbytes(self) -> int:
        """Bytes the buffers hold (their capacity, which is what the memory budget pays for)."""
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.buffers)

    def view(self, layer: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `n` cached keys and values of `layer` (no copy)."""
        k, v = self.buffers[layer]
        return k[:, :, :n], v[:, :, :n]

    def write(
        self, layer: int, at: int, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Put `keys`/`values` [1, kv_heads, t, head_dim] at positions at..at+t of `layer` (growing its
        buffers if needed, keeping the first `at`); returns views of positions 0..at+t."""
        need = at + keys.shape[2]
        if layer == len(self.buffers):
            self.buffers.append((_empty_like(keys, need), _empty_like(values, need)))
        k, v = self.buffers[layer]
        if k.shape[2] < need:
            cap = max(need, k.shape[2] + max(GROWTH_TOKENS, k.shape[2] // 8))
            k2, v2 = _empty_like(keys, cap), _empty_like(values, cap)
            k2[:, :, :at], v2[:, :, :at] = k[:, :, :at], v[:, :, :at]
            k, v = k2, v2
            self.buffers[layer] = (k, v)
        k[:, :, at:need], v[:, :, at:need] = keys, values
        return k[:, :, :need], v[:, :, :need]

    def evict(self) -> None:
        """Drop the keys and values; the next cut recomputes the trunk from the start (still exact)."""
        if self.ids:
            self.evictions += 1
        self.ids, self.buffers = [], []

    def roll_back(self, ids: list[int]) -> None:
        """Keep only the longest prefix of the cached trunk that `ids` begins with (the positions after
        it become scratch; nothing is copied)."""
        keep = common_prefix(self.ids, ids)
        if keep < len(self.ids):
            self.rollbacks += 1
            self.ids = self.ids[:keep]


def _empty_like(t: torch.Tensor, length: int) -> torch.Tensor:
    return t.new_empty(1, t.shape[1], length, t.shape[3])


@dataclass(frozen=True)
class TailJob:
    """One cut of one session: its whole per-cut prompt and how many leading tokens stay cached."""

    state: KVState
    ids: list[int]
    stable: int
    """At most len(ids) - 1: the last token is always computed (its hidden state is the verdict's)."""


@torch.inference_mode()
def forward_tails(
    guard: Guard, jobs: list[TailJob], pad_id: int = 0, head: HeadCache | None = None
) -> list[float]:
    """logit(safe) - logit(unsafe) at the end of each job's prompt (see `forward_tails_hidden`)."""
    return verdict_logit_diff(guard, forward_tails_hidden(guard, jobs, pad_id, head)).float().tolist()


@dataclass
class _Row:
    """One session's part of a forward: its new trunk tokens, then one tail per cut."""

    state: KVState
    trunk: list[int]
    """The longest stable prefix among the session's cuts here (every cut's stable part is a prefix of
    the same current prompt); the session's cache holds exactly this afterwards."""
    jobs: list[int]
    """Indices of the row's cuts in the call's job list."""
    start: int = 0
    shared: list[int] = field(default_factory=list)
    """Per cut: how many trunk tokens its prompt shares (its tail attends to those)."""
    tails: list[list[int]] = field(default_factory=list)

    @property
    def new(self) -> list[int]:
        return self.trunk[self.start :] + [t for tail in self.tails for t in tail]

    def reads(self) -> list[int]:
        """Positions, among the row's new tokens, of each cut's verdict (its tail's last token)."""
        at, out = len(self.trunk) - self.start, []
        for tail in self.tails:
            at += len(tail)
            out.append(at - 1)
        return out


@torch.inference_mode()
def forward_tails_hidden(
    guard: Guard, jobs: list[TailJob], pad_id: int = 0, head: HeadCache | None = None
) -> torch.Tensor:
    """The final hidden states [len(jobs), H] at the end of each job's prompt, in one forward.

    Jobs of one session (consecutive cuts of one push) share a row: its new trunk tokens once, then one
    tail per cut, each tail attending to the trunk tokens its prompt shares and causally to itself, at
    the positions of a plain forward of its prompt (the one-pass layout of plan.py, over the session's
    cache). Afterwards each session's state holds the longest stable prefix of its cuts. A session
    whose state holds nothing (new, or evicted) starts from the guard's template head when `head` is
    given: its keys and values are copied in, not computed."""
    rows: dict[int, _Row] = {}
    for k, job in enumerate(jobs):
        row = rows.setdefault(id(job.state), _Row(job.state, [], []))
        row.jobs.append(k)
        if job.stable > len(row.trunk):
            row.trunk = job.ids[: job.stable]
    for row in rows.values():
        row.state.roll_back(row.trunk)
        if head is not None and not row.state.ids:
            _start_from_head(row.state, row.trunk, head)
        row.start = len(row.state.ids)
        for k in row.jobs:
            ids = jobs[k].ids
            shared = min(common_prefix(ids, row.trunk), len(ids) - 1)
            row.shared.append(shared)
            row.tails.append(ids[shared:])
    order = list(rows.values())
    new = [row.new for row in order]
    cached, length = max(r.start for r in order), max(len(n) for n in new)
    device, model = guard.device, guard.model
    if len(order) == 1:  # one session: its own buffers, the new keys written in place after its cache
        layers = model.config.get_text_config().num_hidden_layers
        cache = _in_place_cache(order[0].state, order[0].start, layers)
    else:
        cache = _padded_cache([r.state for r in order], [r.start for r in order], cached)
    input_ids = torch.tensor([n + [pad_id] * (length - len(n)) for n in new], device=device)
    pos = torch.tensor([_positions(r, length) for r in order], device=device)
    mask: Any = None  # one session, one cut: plain causal attention over its cache, the model's own path
    if len(order) > 1 or len(jobs) > 1:
        mask = _mask(order, cached, length, model, guard.dtype)
        mask = {k: v.to(device) for k, v in mask.items()} if isinstance(mask, dict) else mask.to(device)
    out = model.base_model(
        input_ids=input_ids, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True
    )
    hidden = out.last_hidden_state
    last = hidden.new_empty(len(jobs), hidden.shape[-1])
    for r, row in enumerate(order):
        for k, at in zip(row.jobs, row.reads(), strict=True):
            last[k] = hidden[r, at]
        keep = len(row.trunk) - row.start
        if len(order) > 1:  # the trunk part of this row's new keys and values, after its cache
            for i, layer in enumerate(cache.layers):
                k_new = layer.keys[r : r + 1, :, cached : cached + keep]
                row.state.write(i, row.start, k_new, layer.values[r : r + 1, :, cached : cached + keep])
        row.state.ids = list(row.trunk)
        row.state.trunk_tokens += keep
        row.state.tail_tokens += sum(len(t) for t in row.tails)
    return last


def _positions(row: _Row, length: int) -> list[int]:
    """Position ids of a row's new tokens: the trunk's in order, each tail's from its shared prefix."""
    pos = list(range(row.start, len(row.trunk)))
    for shared, tail in zip(row.shared, row.tails, strict=True):
        pos += range(shared, shared + len(tail))
    return pos + [pos[-1] + 1 + i for i in range(length - len(pos))] if pos else list(range(length))


def _start_from_head(state: KVState, trunk: list[int], head: HeadCache) -> None:
    """Fill an empty state with the longest head prefix `trunk` begins with."""
    m = head.usable([trunk], len(trunk) + 1)
    for i, (k, v) in enumerate(head.layers(m)):
        state.write(i, 0, k, v)
    state.ids = list(trunk[:m])


class _InPlaceLayer(DynamicLayer):
    """A cache layer over one session's buffers: `update` writes the new keys and values after the
    cached ones in place and hands attention a view (DynamicLayer would concatenate, copying the whole
    cache on every forward)."""

    def __init__(self, state: KVState, index: int, start: int) -> None:
        super().__init__()
        self._state, self._index, self._start = state, index, start
        if start:
            self.keys, self.values = state.view(index, start)
            self.device = self.keys.device
            self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        self.keys, self.values = self._state.write(self._index, self._start, key_states, value_states)
        self.device, self.is_initialized = self.keys.device, True
        return self.keys, self.values


def _in_place_cache(state: KVState, start: int, layers: int) -> Any:
    return Cache(layers=[_InPlaceLayer(state, i, start) for i in range(layers)])


def _padded_cache(states: list[KVState], starts: list[int], cached: int) -> Any:
    """A DynamicCache whose row i holds state i's first starts[i] keys and values, left-aligned,
    zero-padded to `cached` (the padding is masked out)."""
    from transformers import DynamicCache

    cache = DynamicCache()  # plain full-attention layers: the masks below say what each row sees
    if cached == 0:
        return cache
    ref = next(s.buffers for s, n in zip(states, starts, strict=True) if n)
    for layer, (k0, v0) in enumerate(ref):
        k = k0.new_zeros(len(states), k0.shape[1], cached, k0.shape[3])
        v = v0.new_zeros(len(states), v0.shape[1], cached, v0.shape[3])
        for row, (s, n) in enumerate(zip(states, starts, strict=True)):
            if n:
                k[row, :, :n], v[row, :, :n] = s.view(layer, n)
        cache.update(k, v, layer)
    return cache


def _mask(rows: list[_Row], cached: int, length: int, model: Any, dtype: torch.dtype) -> Any:
    """Additive masks [B, 1, length, cached + length]. Row i's cache sits in columns [0, start) and its
    new tokens from column `cached` on: its trunk tokens see the cache and, causally, each other; a
    cut's tail sees the first `shared` trunk tokens (cache, then new) and, causally, itself; padding
    sees itself only (no row is all -inf)."""
    allowed = torch.zeros(len(rows), length, cached + length, dtype=torch.bool)
    causal = torch.ones(length, length, dtype=torch.bool).tril_()
    for r, row in enumerate(rows):
        n = len(row.trunk) - row.start
        allowed[r, :n, : row.start] = True
        allowed[r, :n, cached : cached + n] = causal[:n, :n]
        at = n
        for shared, tail in zip(row.shared, row.tails, strict=True):
            t = len(tail)
            allowed[r, at : at + t, : min(shared, row.start)] = True
            if shared > row.start:
                allowed[r, at : at + t, cached : cached + shared - row.start] = True
            allowed[r, at : at + t, cached + at : cached + at + t] = causal[:t, :t]
            at += t
        pad = torch.arange(at, length)
        allowed[r, pad, cached + pad] = True
    full = torch.zeros(len(rows), 1, length, cached + length, dtype=dtype)
    full.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
    as_dict = sliding_window_of(model)[1]
    # Sessions on sliding-window guards are capped below the window (see IncrementalSession), where
    # sliding and full attention are the same mask.
    return {"full_attention": full, "sliding_attention": full} if as_dict else full
