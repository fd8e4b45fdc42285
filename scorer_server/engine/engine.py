"""The STAR engine: plan responses, batch their cuts into forwards, turn logits into scores."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from scorer_server.budget import TokenBudget
from scorer_server.engine.caches import HeadCache
from scorer_server.engine.forward import forward_rows
from scorer_server.engine.plain import forward_prompts
from scorer_server.engine.plan import ResponsePlan, WorkItem, plan_response, split_plan
from scorer_server.engine.work import Read, Row, Work
from scorer_server.guards.guard import Guard
from scorer_server.guards.guard_config import GuardConfig
from scorer_server.guards.head import full_logits, head_logits
from scorer_server.guards.loader import load_guard
from scorer_server.guards.published import processed_p_safe
from scorer_server.guards.verdict import classes_p_safe, read_verdict
from scorer_server.limits import Limits
from star_contract.types import Convention, Conversation, ScoreRequest, Segment, StarScores, Verdict

Method = Literal["one_pass", "per_cut"]


@dataclass(frozen=True)
class EngineConfig:
    """The engine's token budget, request limits and head cache."""

    budget: TokenBudget = field(default_factory=TokenBudget)
    limits: Limits = field(default_factory=Limits)
    """What one request may ask for (cuts, guard tokens), checked before the work."""
    head_cache: bool = True
    """Keep the keys and values of the guard's template head (the policy before the conversation) once
    and start every row from them instead of recomputing them per request."""


@dataclass(frozen=True)
class Ran:
    """One `StarEngine.run`: each work's segments, and the rows the forward computed."""

    segments: list[list[Segment]]
    rows: list[Row]
    kv_bytes: int


def pack_rows(items: list[WorkItem], budget: TokenBudget) -> Iterator[list[WorkItem]]:
    """Group rows (sorted by length to limit padding) into forwards within `budget`."""
    order = sorted(items, key=lambda it: it.tokens)
    batch: list[WorkItem] = []
    longest = 0
    for it in order:
        t = it.tokens
        if batch and not budget.admits(len(batch) + 1, max(longest, t)):
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
        self.head = HeadCache(guard) if self.config.head_cache else None
        tok = guard.tokenizer
        self.pad_id = int(tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0))
        self.kv_bytes_per_cut = 0.0
        """The most key and value bytes a forward has held per cut it scored (benchmarks report it)."""

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
        return split_plan(plan, self.config.budget.max_row_tokens)

    # -- forwards --
    def run(self, works: Sequence[Work]) -> Ran:
        """One forward over `works` (Score items and live-moderation pushes alike; the caller keeps
        within the token budget): each work's segments, in its cuts' order."""
        rows = [w.row(self.head) for w in works]
        done = forward_rows(self.guard, rows, self.pad_id)
        per_work = [w.reads() for w in works]
        reads = [r for rs in per_work for r in rs]
        probs = self.read_out(reads, hidden=done.hidden)
        if reads:
            self.kv_bytes_per_cut = max(self.kv_bytes_per_cut, done.kv_bytes / len(reads))
        out: list[list[Segment]] = []
        k = 0
        for rs in per_work:
            out.append(
                [Segment(end=r.end, p_safe=p) for r, p in zip(rs, probs[k : k + len(rs)], strict=True)]
            )
            k += len(rs)
        return Ran(out, rows, done.kv_bytes)

    @torch.inference_mode()
    def read_out(
        self, reads: list[Read], hidden: torch.Tensor | None = None, logits: torch.Tensor | None = None
    ) -> list[float]:
        """P(safe) of each read from the final hidden states [N, H] or the full logits [N, V] of its
        `nodes` consecutive rows, under its convention: the raw convention reads only the rows of the
        output embedding its reading tree needs (guards/reader.py), the published one the whole
        vocabulary's processed scores (computed for those reads only)."""
        g = self.guard
        starts = [0]
        for r in reads:
            starts.append(starts[-1] + r.nodes)
        published = [k for k, r in enumerate(reads) if r.convention is Convention.PUBLISHED]
        raw = [k for k, r in enumerate(reads) if r.convention is not Convention.PUBLISHED]
        out = [0.0] * len(reads)
        if raw:
            node_ids = g.reader.ids() if g.reader.nodes > 1 else [g.class_ids]
            wanted = sorted({i for ids in node_ids for i in ids})
            col = {t: c for c, t in enumerate(wanted)}
            rows = [j for k in raw for j in range(starts[k], starts[k + 1])]
            if hidden is not None:
                picked = head_logits(g, hidden[rows], wanted).cpu().tolist()
            else:
                assert logits is not None
                picked = logits[rows][:, wanted].float().cpu().tolist()
            at = 0
            for k in raw:
                nodes = picked[at : at + reads[k].nodes]
                at += reads[k].nodes
                by_node = [[row[col[t]] for t in ids] for row, ids in zip(nodes, node_ids, strict=True)]
                r = reads[k]
                if g.reader.nodes > 1:
                    out[k] = g.reader.p_safe(by_node, r.temperature, r.safe)
                else:
                    out[k] = classes_p_safe(by_node[0], r.safe or g.safe_classes, r.temperature)
        if published:
            rows = [starts[k] for k in published]  # one node: the published convention has no fields
            full = full_logits(g, hidden[rows]) if hidden is not None else logits[rows]  # type: ignore[index]
            prompts = [reads[k].prompt or [] for k in published]
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
        for batch in pack_rows(items, self.config.budget):
            for it, segs in zip(batch, self.run(batch).segments, strict=True):
                for i, s in zip(it.cut_indices, segs, strict=True):
                    found[id(it.plan)][i] = s.p_safe
        return [_scores(p, found[id(p)]) for p in plans]

    def _score_per_cut(self, reqs: list[ScoreRequest]) -> list[StarScores]:
        plans = [self.plan(r) for r in reqs]
        prompts = [(k, j, p.prompt(j)) for k, p in enumerate(plans) for j in range(len(p.shared))]
        prompts.sort(key=lambda x: len(x[2]))
        last: dict[tuple[int, int], torch.Tensor] = {}  # (plan, prompt) -> its logits [V]
        batch: list[tuple[int, int, list[int]]] = []
        for entry in [*prompts, None]:
            if batch and (entry is None or not self.config.budget.admits(len(batch) + 1, len(entry[2]))):
                logits = forward_prompts(self.guard, [b[2] for b in batch], self.pad_id)
                last.update({(k, j): row for (k, j, _), row in zip(batch, logits, strict=True)})
                batch = []
            if entry is not None:
                batch.append(entry)
        out = []
        for k, p in enumerate(plans):
            rows = torch.stack([last[(k, j)] for j in range(len(p.shared))])
            probs = self.read_out([_read(p, i) for i in range(len(p.cuts))], logits=rows)
            out.append(_scores(p, dict(enumerate(probs))))
        return out

    # -- whole-response verdicts --
    @torch.inference_mode()
    def judge(self, conversations: list[Conversation], decode: bool = True) -> list[Verdict]:
        """P(unsafe) of each full response and, when `decode`, the guard's verdict text and categories."""
        g = self.guard
        rendered = [g.template.render(c) for c in conversations]
        prompts = g.encode(rendered)
        for i, p in enumerate(prompts):
            self.config.limits.check_tokens(len(p), f"conversations[{i}]")
        nodes = g.reader.nodes
        every = g.encode([t for text in rendered for t in g.reader.texts(text)]) if nodes > 1 else prompts
        logits = torch.cat(
            [forward_prompts(g, every[i : i + 32], self.pad_id) for i in range(0, len(every), 32)]
        )
        reads = [Read(0, Convention.RAW, 1.0, None, nodes) for _ in conversations]
        p_safe = self.read_out(reads, logits=logits)
        ids = list(g.reader.prompt_ids())
        for k, conv in enumerate(conversations):  # a prompt: its own verdict, at the first node
            if conv.is_prompt:
                p_safe[k] = g.reader.prompt_p_safe(logits[k * nodes, ids].tolist())
        texts = self._decode(prompts) if decode and g.preset.judge_max_new_tokens > 0 else [""] * len(prompts)
        return [read_verdict(p, text, g.preset) for p, text in zip(p_safe, texts, strict=True)]

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


def _read(plan: ResponsePlan, i: int) -> Read:
    r = plan.request
    prompt = plan.prompt(i * plan.nodes)
    return Read(plan.cuts[i], r.convention, r.temperature, prompt, plan.nodes, plan.safe)


def _scores(plan: ResponsePlan, found: dict[int, float]) -> StarScores:
    segs = tuple(Segment(end=c, p_safe=found[i]) for i, c in enumerate(plan.cuts))
    return StarScores(segs, guard_tokens=plan.cost(list(range(len(plan.cuts)))))
