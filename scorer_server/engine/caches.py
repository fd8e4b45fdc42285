"""Keys and values a forward starts from: a live session's trunk, and the guard's template head.

Both are a `KVState`: per layer, key and value buffers holding the cached tokens' keys and values. A
session's state grows with its response and is written by the forwards that extend its trunk; the
head's is computed once and only read (every Score row and every new session starts from it).

On a guard with sliding-window layers (Gemma 2 and 3), a query at position p sees only keys at
positions above p - window. A state keeps everything for full-attention layers and, for sliding
layers, only the keys a later query can still see (plus some slack, so a roll-back by a few tokens
does not force a recomputation); a state that can no longer serve a query recomputes from the start,
so a score is never wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from scorer_server.engine.plan import common_prefix
from scorer_server.guards.guard import Guard
from star_contract.types import Conversation

GROWTH_TOKENS = 32
"""A state's buffers grow by at least this many tokens (or an eighth of their size) at a time: slack
is memory the session budget pays for, and a growth copies the cache once."""

_PROBES = (("a", "b"), ("Zq 1", "Yx 2"))


@dataclass(frozen=True)
class AttentionLayout:
    """Which of the guard's layers attend through a sliding window, and how wide it is."""

    window: int | None
    """Keys a query sees in a sliding layer, itself included (None: no sliding layers)."""
    sliding: tuple[bool, ...]
    """Per layer: whether it is a sliding-window layer."""
    per_type_masks: bool
    """The model takes a mask per layer type ({"full_attention": ..., "sliding_attention": ...})."""

    @property
    def mixed(self) -> bool:
        return any(self.sliding) and not all(self.sliding)


def attention_layout(model: Any) -> AttentionLayout:
    """The sliding-window layout of a transformers causal LM (Gemma 2/3: per-layer types; Mistral- and
    Qwen2-style configs: one window for every layer when `use_sliding_window`)."""
    cfg = model.config.get_text_config()
    layers = cfg.num_hidden_layers
    window = getattr(cfg, "sliding_window", None)
    types = list(getattr(cfg, "layer_types", None) or [])
    if "sliding_attention" in types:
        return AttentionLayout(window, tuple(t == "sliding_attention" for t in types[:layers]), True)
    if window is not None and getattr(cfg, "use_sliding_window", True):
        return AttentionLayout(window, (True,) * layers, False)
    return AttentionLayout(None, (False,) * layers, False)


@dataclass(eq=False)
class KVState:
    """Cached keys and values of a token prefix `ids`.

    Layer l's buffers [1, kv_heads, capacity, head_dim] hold positions `first[l]` .. len(ids) - 1 from
    index 0 (`first` is 0 except on sliding layers that dropped keys no query can see any more).
    Positions past len(ids) are scratch: a forward over one session writes its new tokens there in place
    (tails included) and only the trunk part counts afterwards."""

    window: int | None = None
    """The guard's sliding window: set, the state drops keys of sliding layers that no later query can
    see (`trim`); None keeps everything (the template head, which rows of any length start from)."""
    ids: list[int] = field(default_factory=list)
    buffers: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    first: list[int] = field(default_factory=list)
    trunk_tokens: int = 0
    """Trunk tokens computed into this state over its life (recomputation after eviction included)."""
    tail_tokens: int = 0
    """Tail tokens computed over it (each cut's tokens after its stable point, suffix included)."""
    rollbacks: int = 0
    evictions: int = 0

    @property
    def nbytes(self) -> int:
        """Bytes the buffers hold (their capacity: what a memory budget pays for)."""
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.buffers)

    def first_at(self, layer: int) -> int:
        return self.first[layer] if layer < len(self.first) else 0

    def view(self, layer: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of positions first_at(layer) .. n - 1 (views, no copy)."""
        k, v = self.buffers[layer]
        m = n - self.first_at(layer)
        return k[:, :, :m], v[:, :, :m]

    def write(
        self, layer: int, at: int, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Put `keys`/`values` [1, kv_heads, t, head_dim] at positions at .. at + t - 1 of `layer`
        (growing its buffers if needed, keeping what comes before `at`); views of everything held up to
        position at + t - 1."""
        if layer == len(self.buffers):
            self.buffers.append((_empty_like(keys, 0), _empty_like(values, 0)))
            self.first.append(0)
        lo = self.first[layer]
        i, need = at - lo, at - lo + keys.shape[2]
        k, v = self.buffers[layer]
        if k.shape[2] < need:
            cap = max(need, k.shape[2] + max(GROWTH_TOKENS, k.shape[2] // 8))
            k2, v2 = _empty_like(keys, cap), _empty_like(values, cap)
            k2[:, :, :i], v2[:, :, :i] = k[:, :, :i], v[:, :, :i]
            k, v = k2, v2
            self.buffers[layer] = (k, v)
        k[:, :, i:need], v[:, :, i:need] = keys, values
        return k[:, :, :need], v[:, :, :need]

    def trim(self, sliding: tuple[bool, ...]) -> None:
        """Forget, on sliding layers, the keys no query at the end of `ids` or after can see, less a
        slack so that a roll-back by a few tokens still finds what it needs. Moves what is kept to the
        buffer's start, and only once at least half of what is held can go: O(1) copies per token."""
        if self.window is None:
            return
        slack = max(GROWTH_TOKENS, self.window // 4)
        keep_from = len(self.ids) - self.window + 1 - slack
        for layer, is_sliding in enumerate(sliding):
            lo = self.first_at(layer)
            held, drop = len(self.ids) - lo, keep_from - lo
            if not is_sliding or layer >= len(self.buffers) or drop <= 0 or 2 * drop < held:
                continue
            k, v = self.buffers[layer]
            k[:, :, : held - drop] = k[:, :, drop:held].clone()
            v[:, :, : held - drop] = v[:, :, drop:held].clone()
            self.first[layer] = lo + drop

    def evict(self) -> None:
        """Drop everything (a memory budget's choice); the next forward recomputes the trunk from the
        start, still exact."""
        if self.ids:
            self.evictions += 1
        self.clear()

    def clear(self) -> None:
        self.ids, self.buffers, self.first = [], [], []

    def roll_back(self, ids: list[int]) -> None:
        """Keep only the longest prefix of the cached ids that `ids` begins with (the positions after it
        become scratch; nothing is copied)."""
        keep = common_prefix(self.ids, ids)
        if keep < len(self.ids):
            self.rollbacks += 1
            self.ids = self.ids[:keep]

    def serves(self, position: int) -> bool:
        """Whether every layer still holds the keys a query at `position` may see (sliding layers drop
        the ones no later query can see: `trim`)."""
        w = self.window
        return w is None or all(lo <= max(0, position - w + 1) for lo in self.first)

    def copy_prefix(self, source: KVState, n: int) -> None:
        """Fill this empty state with the first `n` cached tokens of `source`, which keeps all of its
        keys (the template head): copied, so this state can grow and drop keys on its own."""
        for layer in range(len(source.buffers)):
            k, v = source.view(layer, n)
            self.write(layer, 0, k, v)
        self.ids = list(source.ids[:n])


def _empty_like(t: torch.Tensor, length: int) -> torch.Tensor:
    return t.new_empty(1, t.shape[1], length, t.shape[3])


def template_head_ids(guard: Guard) -> list[int]:
    """Guard token ids that begin every prompt of this guard, whatever the conversation: the longest
    common token prefix of the prompts of two conversations that differ from their first character."""
    prompts = guard.encode([guard.template.render(Conversation.from_pair(u, r)) for u, r in _PROBES])
    return prompts[0][: common_prefix(prompts[0], prompts[1])]


class HeadCache:
    """The guard's template head (policy, category list, role labels before the first message), its keys
    and values computed once and shared, read-only, by every row that begins with it.

    Llama Guard 3 spends 138 (1B template) or 146 (8B) tokens before the conversation begins (real
    Llama 3 tokenizer); a prefix-caching engine such as vLLM reuses them across requests, and so does
    this. Each row starts from the longest head prefix its own tokens really begin with (checked token
    by token), so a conversation whose first characters merge with the head's last token is still
    exact: it only reuses fewer tokens. (Llama 3's pre-tokenizer never merges across the head's final
    `User: `; tokenizers that merge across spaces do, tests/test_head_cache.py.)"""

    def __init__(self, guard: Guard, ids: list[int] | None = None) -> None:
        from scorer_server.engine.forward import Row, forward_rows

        self.ids = template_head_ids(guard) if ids is None else list(ids)
        self.state = KVState()
        self.reused = 0
        """Head tokens taken from the cache instead of computed, over all forwards so far."""
        if self.ids:
            forward_rows(guard, [Row(self.state, 0, list(self.ids), [], store=True)])

    @property
    def tokens(self) -> int:
        return len(self.ids)

    @property
    def nbytes(self) -> int:
        """Memory the cached keys and values hold (the star_head_cache_bytes metric)."""
        return self.state.nbytes

    def usable(self, trunks: list[list[int]], min_shared: int) -> int:
        """How many head tokens rows over `trunks` can start from: the longest head prefix all of them
        begin with, at most `min_shared - 1` so every cut's verdict position is still computed."""
        m = min(min_shared - 1, len(self.ids))
        for t in trunks:
            if m <= 0:
                return 0
            m = common_prefix(self.ids[:m], t)
        return max(m, 0)

    def take(self, trunk: list[int], min_shared: int) -> int:
        """`usable([trunk], min_shared)`, counted as reused."""
        m = self.usable([trunk], min_shared)
        self.reused += m
        return m
