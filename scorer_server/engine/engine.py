"""The STAR engine: plan responses, batch their cuts into forwards, turn logits into scores."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from scorer_server.engine.forward import (
    forward_items,
    forward_items_prefix_cache,
    forward_prompts,
    supports_prefix_cache,
)
from scorer_server.engine.head_cache import HeadCache
from scorer_server.engine.plan import ResponsePlan, WorkItem, plan_response, split_plan
from scorer_server.guards.guard import Guard
from scorer_server.guards.head import full_logits, verdict_logit_diff
from scorer_server.guards.loader import GuardConfig, load_guard
from scorer_server.guards.published import processed_p_safe
from scorer_server.guards.verdict import p_safe, read_verdict
from scorer_server.limits import Limits
from star_contract.types import Convention, Conversation, ScoreRequest, Segment, StarScores, Verdict

Method = Literal["one_pass", "per_cut"]


@dataclass(frozen=True)
class EngineConfig:
    """Batching limits of the engine."""

    max_batch_tokens: int = 16384
    """Padded tokens in one forward (rows x longest row). Bounds activations and mask memory."""
    max_row_tokens: int = 4096
    """Tokens in one row; a response whose trunk + tails exceed it is split over several rows."""
    limits: Limits = field(default_factory=Limits)
    """What one request may ask for (cuts, guard tokens), checked before the work."""
    layout: Literal["auto", "prefix_cache", "tree"] = "auto"
    """How a forward computes the cuts. `tree`: one forward per batch, every row holding its trunk and
    tails under a 4-D mask. `prefix_cache`: the trunks first, then the tails against copies of their
    trunk's keys and values, skipping the masked-out attention. `auto`: prefix_cache unless the guard
    has sliding-window layers (whose caches drop old keys), then tree. Both give the same numbers."""
    tail_rows_per_item: int = 8
    """prefix_cache: rows the tails of one item are spread over (more rows: less attention, more copies
    of the trunk cache)."""
    head_cache: bool = True
    """prefix_cache: keep the keys and values of the guard's template head (the policy before the
    conversation) once and start every trunk from them instead of recomputing them per request."""


def pack_rows(items: list[WorkItem], max_batch_tokens: int) -> Iterator[list[WorkItem]]:
    """Group rows (sorted by length to limit padding) into forwards of at most `max_batch_tokens`."""
    order = sorted(items, key=lambda it: it.tokens)
    batch: list[WorkItem] = []
    longest = 0
    for it in order:
        t = it.tokens
        if batch and (len(batch) + 1) * max(longest, t) > max_batch_tokens:
            yield batch
            batch, longest = [], 0
        batch.append(it)
        longest = max(longest, t)
    if batch:
        yield batch


class StarEngine:
    """Exact STAR scores for every cut of a response from one guard, in as few forwards as fit."""

    def __init__(self, guard: Guard, config: EngineConfig | None = None) -> None:
        self.guard = guard
        self.config = config or EngineConfig()
        layout = self.config.layout
        if layout == "auto":
            layout = "prefix_cache" if supports_prefix_cache(guard.model) else "tree"
        elif layout == "prefix_cache" and not supports_prefix_cache(guard.model):
            raise ValueError(
                "layout 'prefix_cache' does not support sliding-window guards; use 'tree' or 'auto'"
            )
        self.layout = layout
        self.head: HeadCache | None = None
        if layout == "prefix_cache" and self.config.head_cache:
            self.head = HeadCache(guard)
        tok = guard.tokenizer
        self.pad_id = int(tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0))

    @classmethod
    def from_dir(
        cls,
        path: str | Path,
        preset: str = "llama-guard-3",
        *,
        config: EngineConfig | None = None,
        **guard: Any,
    ) -> StarEngine:
        """Load the guard directory `path` and wrap it in an engine.

        `guard` takes the other `GuardConfig` fields (device, dtype, template_kwargs, ...).
        """
        return cls(load_guard(GuardConfig(path=str(path), preset=preset, **guard)), config)

    # -- planning (CPU only; safe to run on another thread than the forward) --
    def plan(self, request: ScoreRequest) -> ResponsePlan:
        return plan_response(self.guard, request, self.config.limits)

    def work_items(self, plan: ResponsePlan) -> list[WorkItem]:
        return split_plan(plan, self.config.max_row_tokens)

    # -- forwards --
    def run(self, items: list[WorkItem]) -> list[list[Segment]]:
        """One forward over `items` (the caller keeps within the token budget)."""
        if self.layout == "prefix_cache":
            hidden = forward_items_prefix_cache(
                self.guard, items, self.pad_id, self.config.tail_rows_per_item, self.head
            )
        else:
            hidden = forward_items(self.guard, items, self.pad_id)
        probs = self.read_out([(it.plan, i) for it in items for i in it.cut_indices], hidden=hidden)
        out: list[list[Segment]] = []
        k = 0
        for it in items:
            ends = [it.plan.cuts[i] for i in it.cut_indices]
            out.append(
                [Segment(end=e, p_safe=p) for e, p in zip(ends, probs[k : k + len(ends)], strict=True)]
            )
            k += len(ends)
        return out

    @torch.inference_mode()
    def read_out(
        self,
        reads: list[tuple[ResponsePlan, int]],
        hidden: torch.Tensor | None = None,
        logits: torch.Tensor | None = None,
    ) -> list[float]:
        """P(safe) at each read (plan, cut index) from its final hidden state [N, H] or its full logits
        [N, V], under its request's convention: the two verdict rows for the raw convention, the whole
        vocabulary's processed scores for the published one (computed for those reads only)."""
        g = self.guard
        published = [k for k, (p, _) in enumerate(reads) if p.request.convention is Convention.PUBLISHED]
        raw = [k for k, (p, _) in enumerate(reads) if p.request.convention is not Convention.PUBLISHED]
        out = [0.0] * len(reads)
        if raw:
            if hidden is not None:
                diffs = verdict_logit_diff(g, hidden[raw]).cpu().tolist()
            else:
                assert logits is not None
                diffs = (logits[raw, g.safe_id] - logits[raw, g.unsafe_id]).cpu().tolist()
            for k, d in zip(raw, diffs, strict=True):
                out[k] = p_safe(d, reads[k][0].request.temperature)
        if published:
            full = full_logits(g, hidden[published]) if hidden is not None else logits[published]  # type: ignore[index]
            prompts = [reads[k][0].prompt(reads[k][1]) for k in published]
            for k, x in zip(published, processed_p_safe(g, full, prompts), strict=True):
                out[k] = x
        return out

    def score(self, requests: Iterable[ScoreRequest], method: Method = "one_pass") -> list[StarScores]:
        """Score every cut of every request."""
        reqs = list(requests)
        if method == "per_cut":
            return self._score_per_cut(reqs)
        plans = [self.plan(r) for r in reqs]
        items = [it for p in plans for it in self.work_items(p)]
        found: dict[int, dict[int, float]] = {id(p): {} for p in plans}
        for batch in pack_rows(items, self.config.max_batch_tokens):
            for it, segs in zip(batch, self.run(batch), strict=True):
                for i, s in zip(it.cut_indices, segs, strict=True):
                    found[id(it.plan)][i] = s.p_safe
        return [_scores(p, found[id(p)]) for p in plans]

    def _score_per_cut(self, reqs: list[ScoreRequest]) -> list[StarScores]:
        plans = [self.plan(r) for r in reqs]
        prompts = [(k, i, p.prompt(i)) for k, p in enumerate(plans) for i in range(len(p.cuts))]
        prompts.sort(key=lambda x: len(x[2]))
        found: list[dict[int, float]] = [{} for _ in plans]
        batch: list[tuple[int, int, list[int]]] = []
        for entry in prompts:
            if batch and (len(batch) + 1) * len(entry[2]) > self.config.max_batch_tokens:
                self._run_prompts(plans, batch, found)
                batch = []
            batch.append(entry)
        if batch:
            self._run_prompts(plans, batch, found)
        return [_scores(p, f) for p, f in zip(plans, found, strict=True)]

    def _run_prompts(
        self,
        plans: list[ResponsePlan],
        batch: list[tuple[int, int, list[int]]],
        found: list[dict[int, float]],
    ) -> None:
        logits = forward_prompts(self.guard, [b[2] for b in batch], self.pad_id)
        probs = self.read_out([(plans[k], i) for k, i, _ in batch], logits=logits)
        for (k, i, _), p in zip(batch, probs, strict=True):
            found[k][i] = p

    # -- whole-response verdicts --
    @torch.inference_mode()
    def judge(self, conversations: list[Conversation], decode: bool = True) -> list[Verdict]:
        """P(unsafe) of each full response and, when `decode`, the guard's verdict text and categories."""
        g = self.guard
        prompts = g.encode([g.template.render(c) for c in conversations])
        for i, p in enumerate(prompts):
            self.config.limits.check_tokens(len(p), f"conversations[{i}]")
        diffs: list[float] = []
        for start in range(0, len(prompts), 32):
            last = forward_prompts(g, prompts[start : start + 32], self.pad_id)
            diffs.extend((last[:, g.safe_id] - last[:, g.unsafe_id]).cpu().tolist())
        texts = self._decode(prompts) if decode and g.preset.judge_max_new_tokens > 0 else [""] * len(prompts)
        return [read_verdict(d, text, g.preset) for d, text in zip(diffs, texts, strict=True)]

    def _decode(self, prompts: list[list[int]]) -> list[str]:
        g = self.guard
        out_texts: list[str] = []
        for start in range(0, len(prompts), 16):
            chunk = prompts[start : start + 16]
            length = max(len(p) for p in chunk)
            ids = torch.tensor([[self.pad_id] * (length - len(p)) + p for p in chunk], device=g.device)
            attn = torch.tensor([[0] * (length - len(p)) + [1] * len(p) for p in chunk], device=g.device)
            gen = g.model.generate(
                input_ids=ids,
                attention_mask=attn,
                max_new_tokens=g.preset.judge_max_new_tokens,
                do_sample=False,
                pad_token_id=self.pad_id,
            )
            out_texts.extend(g.tokenizer.batch_decode(gen[:, length:], skip_special_tokens=True))
        return out_texts


def _scores(plan: ResponsePlan, found: dict[int, float]) -> StarScores:
    segs = tuple(Segment(end=c, p_safe=found[i]) for i, c in enumerate(plan.cuts))
    return StarScores(segs, guard_tokens=plan.cost(list(range(len(plan.cuts)))))
