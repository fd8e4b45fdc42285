"""Reading evaluation sets: harmful prompts (AdvBench-style CSV, HEx-PHI-style JSONL) and benign items.

Named sets in installed packages are in named_sets.py, `datasets` directories and parquet in hf_sets.py;
sources.py picks among them."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROMPT_KEYS = ("prompt", "goal", "instruction", "question", "text")


@dataclass(frozen=True)
class HarmfulPrompt:
    """One harmful request; `category` when the file names one (HEx-PHI's categories, the toy's S1..)."""

    prompt: str
    category: str = ""


@dataclass(frozen=True)
class BenignItem:
    """One capability item: a prompt and the phrase a correct response contains."""

    prompt: str
    answer: str
    task: str = "task"


def _prompt_of(rec: Any, where: str) -> str:
    if isinstance(rec, str):
        return rec
    if isinstance(rec, dict):
        for k in PROMPT_KEYS:
            if isinstance(rec.get(k), str) and rec[k].strip():
                return str(rec[k])
        msgs = rec.get("messages")
        if isinstance(msgs, list):
            users = [m.get("content") for m in msgs if isinstance(m, dict) and m.get("role") == "user"]
            if users and isinstance(users[0], str):
                return users[0]
    raise ValueError(f"{where}: expected a string, an object with one of {PROMPT_KEYS}, or `messages`")


def category_of(rec: Any) -> str:
    """A record's category: a string as is; BeaverTails' {name: bool} flags -> the true names joined by
    `,`; a list joined by `,`; anything else (a HEx-PHI category number) as its string."""
    cat = rec.get("category") if isinstance(rec, dict) else None
    if cat is None:
        return ""
    if isinstance(cat, dict):
        return ",".join(str(k) for k, v in cat.items() if v)
    if isinstance(cat, list | tuple):
        return ",".join(str(c) for c in cat)
    return str(cat)


def harmful_from_records(records: Iterable[tuple[str, Any]]) -> list[HarmfulPrompt]:
    """Harmful prompts from (where, record) pairs. Records with `is_safe` (BeaverTails' prompt-response
    rows) count only when unsafe, each prompt once (its first unsafe row's category)."""
    out: list[HarmfulPrompt] = []
    seen: set[str] = set()
    for where, rec in records:
        if isinstance(rec, dict) and "is_safe" in rec:
            if rec["is_safe"]:
                continue
            prompt = _prompt_of(rec, where).strip()
            if prompt in seen:
                continue
            seen.add(prompt)
            out.append(HarmfulPrompt(prompt, category_of(rec)))
        else:
            out.append(HarmfulPrompt(_prompt_of(rec, where).strip(), category_of(rec)))
    return out


def _jsonl(path: Path) -> list[tuple[str, Any]]:
    out = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((f"{path}:{i}", json.loads(line)))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{i}: invalid JSON ({exc.msg})") from None
    return out


def load_harmful_prompts(path: str | Path, limit: int | None = None) -> list[HarmfulPrompt]:
    """Harmful prompts from an AdvBench-style CSV (column `goal`, or `prompt`/`instruction`), a
    HEx-PHI-style JSONL (`prompt`/`instruction`/`messages`, optional `category`), or plain text lines."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"harmful prompt file not found: {path}")
    suffix = p.suffix.lower()
    out: list[HarmfulPrompt] = []
    if suffix == ".csv":
        with p.open(newline="") as fh:
            reader = csv.DictReader(fh)
            cols = [c for c in PROMPT_KEYS if c in (reader.fieldnames or [])]
            if not cols:
                raise ValueError(f"{path}: no column named one of {PROMPT_KEYS} (AdvBench uses `goal`)")
            cat = "category" if "category" in (reader.fieldnames or []) else None
            out = [HarmfulPrompt(row[cols[0]].strip(), (row.get(cat) or "") if cat else "") for row in reader]
    elif suffix in (".jsonl", ".json"):
        records = (
            _jsonl(p)
            if suffix == ".jsonl"
            else [(f"{p}[{i}]", r) for i, r in enumerate(json.loads(p.read_text()))]
        )
        out = harmful_from_records(records)
    else:
        out = [HarmfulPrompt(line.strip()) for line in p.read_text().splitlines()]
    out = [h for h in out if h.prompt]
    if not out:
        raise ValueError(f"{path}: no prompts found")
    return out[:limit] if limit else out


def load_benign_items(path: str | Path, limit: int | None = None) -> list[BenignItem]:
    """Benign items from JSONL: a prompt (`prompt` or `messages`), `answer` (the phrase a correct
    response contains) and an optional `task` name used to group accuracies."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"benign item file not found: {path}")
    out = []
    for where, rec in _jsonl(p):
        if not isinstance(rec, dict) or not isinstance(rec.get("answer"), str):
            raise ValueError(f"{where}: each benign item needs a string `answer`")
        out.append(BenignItem(_prompt_of(rec, where), rec["answer"], str(rec.get("task", "task"))))
    if not out:
        raise ValueError(f"{path}: no items found")
    return out[:limit] if limit else out
