"""Crash-safe, resumable landscape results: an append-only JSONL of points plus atomically written JSON."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


class RunMismatch(Exception):
    """The output directory holds points of a different run."""


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` so readers see the old or the new file, never a torn one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fingerprint(meta: dict[str, Any]) -> str:
    """A short hash of everything that determines the points' values."""
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:16]


class ResultStore:
    """`meta.json` (what the run is) + `points.jsonl` (one line per finished point, appended and fsynced).

    Reopening a directory of the same run loads the finished points so they are skipped; a torn last
    line (a crash mid-write) is dropped. A directory of a different run is refused unless `overwrite`.
    """

    def __init__(self, out_dir: str | Path, meta: dict[str, Any], overwrite: bool = False) -> None:
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.meta = {**meta, "fingerprint": fingerprint(meta)}
        self.meta_path = self.dir / "meta.json"
        self.points_path = self.dir / "points.jsonl"
        self.points: dict[str, dict[str, Any]] = {}
        if self.meta_path.exists() and not overwrite:
            old = json.loads(self.meta_path.read_text())
            if old.get("fingerprint") != self.meta["fingerprint"]:
                raise RunMismatch(
                    f"{self.dir} holds results of a different run (fingerprint {old.get('fingerprint')} != "
                    f"{self.meta['fingerprint']}); use another output directory or --overwrite"
                )
            self._load()
        else:
            self.points_path.unlink(missing_ok=True)
            (self.dir / "results.json").unlink(missing_ok=True)
            atomic_write_text(self.meta_path, json.dumps(self.meta, indent=2, sort_keys=True))

    def _load(self) -> None:
        if not self.points_path.exists():
            return
        raw = self.points_path.read_bytes()
        good = 0
        for line in raw.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                break
            self.points[rec["key"]] = rec
            good += len(line)
        if good != len(raw):  # drop a torn tail so appends start on a clean line
            with open(self.points_path, "r+b") as fh:
                fh.truncate(good)

    def done(self, key: str) -> bool:
        return key in self.points

    def append(self, record: dict[str, Any]) -> None:
        """Record one finished point durably."""
        line = json.dumps(record, sort_keys=True) + "\n"
        with open(self.points_path, "a") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        self.points[record["key"]] = record

    def write_results(self, results: dict[str, Any], name: str = "results.json") -> Path:
        path = self.dir / name
        atomic_write_text(path, json.dumps(results, indent=2, sort_keys=True))
        return path
