"""Training data: conversations from JSONL or a local `datasets` dataset, tokenised with the trainee's
chat template, labels on assistant tokens, and one guard request per labelled assistant turn."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from star_contract.types import Convention, Conversation, Message, ScoreRequest, StarScores
from trainer_client.alignment import aligned_cuts, cut_spec, token_weights
from trainer_client.chat_template import TraineeTemplate


@dataclass(frozen=True)
class ScoredTurn:
    """One labelled assistant turn: what the guard scores and where its tokens sit in the example."""

    request: ScoreRequest
    positions: tuple[int, ...]
    """Indices into the example's input_ids of this turn's label tokens (after truncation)."""
    token_ends: tuple[int, ...]
    """Per position: the token's end offset relative to the assistant text (clipped to its length)."""


@dataclass(frozen=True)
class Example:
    """A tokenised conversation ready for the trainee."""

    index: int
    input_ids: tuple[int, ...]
    label_mask: tuple[int, ...]
    """1 where the token is a label (an assistant token), 0 on prompt and template tokens."""
    turns: tuple[ScoredTurn, ...]
    conversation: Conversation

    @property
    def label_positions(self) -> list[int]:
        return [i for i, m in enumerate(self.label_mask) if m]


def conversation_hash(conv: Conversation) -> str:
    """sha256 of the conversation's roles and contents (the cache's content key)."""
    blob = json.dumps([[m.role, m.content] for m in conv.messages], ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def _to_conversation(rec: dict[str, Any], where: str) -> Conversation:
    if "messages" in rec:
        msgs = rec["messages"]
        if not isinstance(msgs, list) or not all(
            isinstance(m, dict) and "role" in m and "content" in m for m in msgs
        ):
            raise ValueError(f"{where}: 'messages' must be a list of {{role, content}} objects")
        return Conversation(tuple(Message(str(m["role"]), str(m["content"])) for m in msgs))
    if "prompt" in rec and "response" in rec:
        return Conversation.from_pair(str(rec["prompt"]), str(rec["response"]))
    raise ValueError(f"{where}: a record needs 'messages' or 'prompt' and 'response' (found {sorted(rec)})")


def load_conversations(path: str, split: str = "train", limit: int | None = None) -> list[Conversation]:
    """Read conversations from a .jsonl/.json file or any local dataset `datasets` can load."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"data path {path} does not exist")
    records: list[dict[str, Any]] = []
    if p.is_file() and p.suffix == ".jsonl":
        with p.open(encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None
    else:
        import datasets

        try:
            ds: Any = datasets.load_from_disk(str(p))
        except Exception:
            kind = {".json": "json", ".csv": "csv", ".parquet": "parquet"}.get(p.suffix)
            ds = datasets.load_dataset(kind, data_files=str(p)) if kind else datasets.load_dataset(str(p))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise ValueError(f"{path} has no split {split!r} (it has {', '.join(ds)})")
            ds = ds[split]
        records = list(ds)
    if limit is not None:
        records = records[:limit]
    return [_to_conversation(r, f"{path} record {i}") for i, r in enumerate(records)]


def guard_view(conv: Conversation) -> Conversation:
    """The conversation as the guard judges it: user and assistant turns (system prompts left out)."""
    return Conversation(tuple(m for m in conv.messages if m.role in ("user", "assistant")))


def tokenize_conversation(
    tokenizer: Any,
    conv: Conversation,
    index: int = 0,
    max_length: int = 2048,
    all_turns: bool = False,
    words_per_chunk: int = 5,
    temperature: float = 1.0,
    convention: Convention = Convention.RAW,
) -> Example | None:
    """Tokenise with the chat template; label the last assistant turn (or all of them).

    `tokenizer` is the trainee's tokenizer, or a TraineeTemplate over it (reused across conversations
    by build_examples). Label offsets and cuts are located in the content as the template renders it
    (trimmed by Llama 3.x templates); that rendered content is what the guard is asked to score.

    Returns None when truncation leaves no label token. Raises ValueError when the chat template does
    not render earlier turns as a prefix of the whole (then labels cannot be located).
    """
    msgs = conv.to_dicts()
    turn_ids = [i for i, m in enumerate(msgs) if m["role"] == "assistant"]
    if not turn_ids:
        raise ValueError(f"conversation {index} has no assistant message")
    if not all_turns:
        turn_ids = turn_ids[-1:]
    template = tokenizer if isinstance(tokenizer, TraineeTemplate) else TraineeTemplate(tokenizer)
    full = template.render(msgs, gen=False)
    enc = template.tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    offs: list[tuple[int, int]] = [tuple(o) for o in enc["offset_mapping"]]
    mask = [0] * len(ids)
    turns: list[ScoredTurn] = []
    for i in turn_ids:
        turn = template.locate(msgs, i)
        if not full.startswith(turn.upto):
            raise ValueError(
                "the trainee's chat template does not render earlier turns as a prefix of the whole "
                "conversation, so assistant tokens cannot be located"
            )
        content, start = turn.content, turn.content_start
        lo, hi = turn.prefix_len, len(turn.upto)
        all_pos = [t for t, (s, e) in enumerate(offs) if e > lo and s < hi and t > 0]
        ends_all = [min(max(offs[t][1] - start, 0), len(content)) for t in all_pos]
        cuts = aligned_cuts(content, ends_all, words_per_chunk)
        keep = [(t, e) for t, e in zip(all_pos, ends_all, strict=True) if t < max_length]
        for t, _ in keep:
            mask[t] = 1
        # The guard scores the text the trainee learns: the content as the template rendered it.
        scored = [*msgs[:i], {"role": msgs[i]["role"], "content": content}]
        request = ScoreRequest(
            guard_view(Conversation.from_dicts(scored)), cut_spec(cuts), temperature, convention
        )
        turns.append(ScoredTurn(request, tuple(t for t, _ in keep), tuple(e for _, e in keep)))
    ids, mask = ids[:max_length], mask[:max_length]
    if not any(mask):
        return None
    return Example(index, tuple(ids), tuple(mask), tuple(turns), conv)


def build_examples(
    tokenizer: Any,
    conversations: Sequence[Conversation],
    max_length: int = 2048,
    all_turns: bool = False,
    words_per_chunk: int = 5,
    temperature: float = 1.0,
    convention: Convention = Convention.RAW,
) -> list[Example]:
    """Tokenise every conversation, dropping those that truncation leaves without labels."""
    out: list[Example] = []
    template = TraineeTemplate(tokenizer)
    for c in conversations:
        ex = tokenize_conversation(
            template, c, len(out), max_length, all_turns, words_per_chunk, temperature, convention
        )
        if ex is not None:
            out.append(ex)
    return out


def example_weights(example: Example, scores: Sequence[StarScores]) -> list[float]:
    """STAR weight of each label token of `example` (in label-position order), from its turns' scores."""
    by_pos: dict[int, float] = {}
    for turn, sc in zip(example.turns, scores, strict=True):
        by_pos.update(zip(turn.positions, token_weights(sc, turn.token_ends), strict=True))
    return [by_pos.get(p, 1.0) for p in example.label_positions]


@dataclass
class Batch:
    """Padded tensors for one micro-batch (right padding)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    label_mask: torch.Tensor
    weights: torch.Tensor
    """STAR weight per token (1 where unscored)."""
    keep: torch.Tensor
    """Per example: 1 to train on it, 0 to drop (RS)."""
    ref_logprobs: torch.Tensor | None
    """Reference log-prob of each token given its prefix (precomputed), else None."""
    indices: list[int]

    @property
    def label_tokens(self) -> int:
        return int(self.label_mask.sum())


def collate(
    examples: Sequence[Example],
    pad_id: int,
    weights: Sequence[Sequence[float]] | None = None,
    keep: Sequence[float] | None = None,
    ref_logprobs: Sequence[Sequence[float] | np.ndarray] | None = None,
) -> Batch:
    """Pad examples into a Batch. `weights[i]` and `ref_logprobs[i]` run over example i's label tokens."""
    length = max(len(e.input_ids) for e in examples)
    b = len(examples)
    ids = torch.full((b, length), pad_id, dtype=torch.long)
    attn = torch.zeros((b, length), dtype=torch.long)
    lab = torch.zeros((b, length), dtype=torch.long)
    w = torch.ones((b, length), dtype=torch.float32)
    ref = torch.zeros((b, length), dtype=torch.float32) if ref_logprobs is not None else None
    for r, e in enumerate(examples):
        n = len(e.input_ids)
        ids[r, :n] = torch.tensor(e.input_ids)
        attn[r, :n] = 1
        lab[r, :n] = torch.tensor(e.label_mask)
        pos = torch.tensor(e.label_positions, dtype=torch.long)
        if weights is not None:
            w[r, pos] = torch.tensor(list(weights[r]), dtype=torch.float32)
        if ref is not None and ref_logprobs is not None:
            ref[r, pos] = torch.as_tensor(np.asarray(ref_logprobs[r], dtype=np.float32))
    k = torch.tensor(list(keep) if keep is not None else [1.0] * b, dtype=torch.float32)
    return Batch(ids, attn, lab, w, k, ref, [e.index for e in examples])
