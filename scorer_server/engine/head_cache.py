"""The guard's template head (policy, category list, role labels before the first message), computed once.

Every guard prompt starts with the same tokens: Llama Guard 3 spends 138 (1B template) or 146 (8B) on
its task line and category list before the conversation begins (real Llama 3 tokenizer). A
prefix-caching engine such as vLLM reuses their keys and values across requests; `HeadCache` does the
same for the prefix_cache layout. The head's ids are the longest common token prefix of the prompts of
two conversations that differ from their first character, so they hold nothing a conversation can
change. At forward time each batch starts from the longest head prefix that every trunk in it really
begins with (checked token by token), so a request whose first characters merge with the head's last
token under the tokenizer is still exact: it only reuses fewer tokens.
"""

from __future__ import annotations

from typing import Any

import torch

from scorer_server.engine.plan import common_prefix
from scorer_server.guards.guard import Guard
from star_contract.types import Conversation

_PROBES = (("a", "b"), ("Zq 1", "Yx 2"))


def template_head_ids(guard: Guard) -> list[int]:
    """Guard token ids that begin every prompt of this guard, whatever the conversation."""
    prompts = guard.encode([guard.template.render(Conversation.from_pair(u, r)) for u, r in _PROBES])
    return prompts[0][: common_prefix(prompts[0], prompts[1])]


class HeadCache:
    """Keys and values of the template head, one copy per guard, on the guard's device."""

    def __init__(self, guard: Guard, ids: list[int] | None = None) -> None:
        self.ids = template_head_ids(guard) if ids is None else list(ids)
        self.reused = 0
        """Head tokens taken from the cache instead of computed, over all forwards so far."""
        self._layers: list[tuple[torch.Tensor, torch.Tensor]] = []
        if self.ids:
            self._layers = _head_layers(guard, self.ids)

    @property
    def tokens(self) -> int:
        return len(self.ids)

    @property
    def nbytes(self) -> int:
        """Memory the cached keys and values hold (for the star_head_cache_bytes metric)."""
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self._layers)

    def usable(self, trunks: list[list[int]], min_shared: int) -> int:
        """How many head tokens a batch of trunks can start from: the longest head prefix all of them
        begin with, and at most `min_shared - 1` so every cut's verdict position is still computed."""
        m = min(min_shared - 1, len(self.ids))
        for t in trunks:
            if m <= 0:
                return 0
            m = common_prefix(self.ids[:m], t)
        return max(m, 0)

    def layers(self, m: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer, the keys and values [1, kv_heads, m, head_dim] of the first `m` head tokens
        (views: copy them before writing); counted as reused."""
        if m <= 0:
            return []
        self.reused += m
        return [(k[:, :, :m], v[:, :, :m]) for k, v in self._layers]

    def cache_for(self, config: Any, m: int, batch: int) -> Any:
        """A fresh DynamicCache holding the first `m` head tokens for each of `batch` rows."""
        from transformers import DynamicCache

        self.reused += m * batch
        cache = DynamicCache(config=config)
        for layer, (k, v) in enumerate(self._layers):
            shape = (batch, k.shape[1], m, k.shape[3])
            cache.update(k[:, :, :m].expand(shape), v[:, :, :m].expand(shape), layer)
        return cache


@torch.inference_mode()
def _head_layers(guard: Guard, ids: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    from transformers import DynamicCache

    cache = DynamicCache(config=guard.model.config)
    guard.model.base_model(input_ids=torch.tensor([ids], device=guard.device), cache=cache, use_cache=True)
    layers: list[Any] = list(cache.layers)  # DynamicLayer: full-attention models only (no sliding window)
    return [(layer.keys, layer.values) for layer in layers]
