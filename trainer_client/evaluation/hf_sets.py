"""Harmful prompts from Hugging Face on-disk formats: `datasets.save_to_disk` directories (a Dataset or a
DatasetDict), local parquet files, and HEx-PHI's `category_N.csv` files. Nothing is fetched from a hub.

Records map to prompts as JSONL records do (loaders.harmful_from_records): the prompt is the first of
`prompt`/`goal`/`instruction`/`question`/`text`, else the first user turn of `messages` (PureBad-style
finetuning sets); BeaverTails rows (`is_safe`) count only when unsafe, each prompt once.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from trainer_client.evaluation.loaders import PROMPT_KEYS, HarmfulPrompt, harmful_from_records


def _records_of(ds: Any, where: str) -> list[tuple[str, Any]]:
    return [(f"{where} row {i}", rec) for i, rec in enumerate(ds)]


def _from_disk(path: Path, split: str) -> list[tuple[str, Any]]:
    """The rows of a `save_to_disk` directory; `split` picks a DatasetDict's split (needed if several)."""
    import datasets

    ds: Any = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        splits = list(ds)
        if not split and len(splits) == 1:
            split = splits[0]
        if split not in ds:
            hint = f"no split {split!r}" if split else "several splits"
            raise ValueError(f"{path} has {hint}: choose one as {path}:SPLIT (splits: {', '.join(splits)})")
        return _records_of(ds[split], f"{path}:{split}")
    if split:
        raise ValueError(f"{path} is a single dataset without splits: drop ':{split}'")
    return _records_of(ds, str(path))


def _hexphi(path: Path, category: str) -> list[HarmfulPrompt]:
    """HEx-PHI's category files: one prompt per CSV row (first cell, no header), category = the stem."""
    files = sorted(path.glob("category_*.csv"), key=lambda f: (len(f.stem), f.stem))
    if category:
        files = [f for f in files if f.stem == category]
        if not files:
            raise ValueError(f"{path} has no {category}.csv")
    out = []
    for f in files:
        with f.open(newline="", encoding="utf-8") as fh:
            for row in csv.reader(fh):
                if row and row[0].strip() and row[0].strip().lower() not in PROMPT_KEYS:
                    out.append(HarmfulPrompt(row[0].strip(), f.stem))
    return out


def _parquet(path: Path) -> list[tuple[str, Any]]:
    import pyarrow.parquet as pq

    return _records_of(pq.read_table(path).to_pylist(), str(path))


def is_hf_source(path: Path) -> bool:
    """Whether `path` is something this module reads (a directory or a parquet file)."""
    return path.is_dir() or path.suffix.lower() == ".parquet"


def load_hf_harmful(path: Path, selector: str = "", limit: int | None = None) -> list[HarmfulPrompt]:
    """Harmful prompts from a save_to_disk directory (`selector`: its split), a parquet file, or a
    HEx-PHI directory of category_N.csv files (`selector`: one category, e.g. `category_3`)."""
    if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        out = harmful_from_records(_from_disk(path, selector))
    elif path.is_dir() and any(path.glob("category_*.csv")):
        out = _hexphi(path, selector)
    elif path.is_dir():
        raise ValueError(
            f"{path}: not a `datasets` save_to_disk directory (no dataset_dict.json or state.json) "
            "and no HEx-PHI category_N.csv files"
        )
    else:
        if selector:
            raise ValueError(f"{path} is a single parquet file: drop ':{selector}'")
        out = harmful_from_records(_parquet(path))
    out = [h for h in out if h.prompt]
    if not out:
        raise ValueError(f"{path}: no prompts found")
    return out[:limit] if limit else out
