"""Reading harmful-prompt files: plain text, JSON, JSONL or CSV (AdvBench's harmful_behaviors.csv works)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

PROMPT_KEYS = ("prompt", "goal", "instruction", "text", "question")


def _from_record(rec: Any, where: str) -> str:
    if isinstance(rec, str):
        return rec
    if isinstance(rec, dict):
        for k in PROMPT_KEYS:
            if isinstance(rec.get(k), str):
                return str(rec[k])
    raise ValueError(f"{where}: expected a string or an object with one of the keys {PROMPT_KEYS}")


def read_prompts(path: str | Path, limit: int | None = None) -> list[str]:
    """Prompts from `path`: .txt (one per line), .json (a list), .jsonl (one per line), .csv (a column
    named prompt/goal/instruction/text/question). Blank entries are skipped; `limit` keeps the first N."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"prompt file not found: {path}")
    suffix = p.suffix.lower()
    out: list[str]
    if suffix == ".json":
        data = json.loads(p.read_text())
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list")
        out = [_from_record(r, f"{path}[{i}]") for i, r in enumerate(data)]
    elif suffix == ".jsonl":
        out = []
        for i, line in enumerate(p.read_text().splitlines(), 1):
            if line.strip():
                try:
                    out.append(_from_record(json.loads(line), f"{path}:{i}"))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{i}: invalid JSON ({exc.msg})") from exc
    elif suffix == ".csv":
        with p.open(newline="") as fh:
            reader = csv.DictReader(fh)
            cols = [c for c in PROMPT_KEYS if c in (reader.fieldnames or [])]
            if not cols:
                raise ValueError(f"{path}: no column named one of {PROMPT_KEYS}")
            out = [row[cols[0]] for row in reader]
    else:
        out = p.read_text().splitlines()
    out = [s.strip() for s in out if s and s.strip()]
    if not out:
        raise ValueError(f"{path}: no prompts found")
    return out[:limit] if limit else out
