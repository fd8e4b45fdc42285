"""A persistent sqlite cache of STAR scores, Judge verdicts and reference log-probs.

Keys: scores by (guard fingerprint, conversation content hash, cut spec key); verdicts by (guard
fingerprint, content hash); reference log-probs by (reference model key, token ids hash). The database
runs in WAL mode and every write is one transaction, so a process killed mid-write leaves the previous
state intact: a crash never corrupts it, it only loses the unfinished batch.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from star_contract.types import Segment, StarScores, Verdict

ScoreKey = tuple[str, str, str]
"""(guard fingerprint, content hash, cut spec key)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS scores (
    fingerprint TEXT NOT NULL, content TEXT NOT NULL, cut_key TEXT NOT NULL,
    segments TEXT NOT NULL, guard_tokens INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (fingerprint, content, cut_key));
CREATE TABLE IF NOT EXISTS verdicts (
    fingerprint TEXT NOT NULL, content TEXT NOT NULL, p_unsafe REAL NOT NULL, categories TEXT NOT NULL,
    PRIMARY KEY (fingerprint, content));
CREATE TABLE IF NOT EXISTS ref_logprobs (
    model_key TEXT NOT NULL, tokens TEXT NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (model_key, tokens));
"""


def tokens_hash(ids: Sequence[int]) -> str:
    """sha256 of a token id sequence."""
    return hashlib.sha256(np.asarray(ids, dtype=np.int64).tobytes()).hexdigest()


class ScoreCache:
    """Thread-safe sqlite cache; `path=':memory:'` gives a throwaway one."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30.0, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        with self._lock:
            self._db.executescript(_SCHEMA)
        self.hits = 0
        self.misses = 0

    # -- scores --
    def get_scores(self, keys: Sequence[ScoreKey]) -> list[StarScores | None]:
        out: list[StarScores | None] = []
        with self._lock:
            for fp, content, cut in keys:
                row = self._db.execute(
                    "SELECT segments, guard_tokens FROM scores"
                    " WHERE fingerprint=? AND content=? AND cut_key=?",
                    (fp, content, cut),
                ).fetchone()
                if row is None:
                    out.append(None)
                    self.misses += 1
                else:
                    segs = tuple(Segment(int(e), float(p)) for e, p in json.loads(row[0]))
                    out.append(StarScores(segs, guard_tokens=int(row[1])))
                    self.hits += 1
        return out

    def put_scores(self, items: Iterable[tuple[ScoreKey, StarScores]]) -> None:
        rows = [
            (fp, content, cut, json.dumps([[s.end, s.p_safe] for s in sc.segments]), sc.guard_tokens)
            for (fp, content, cut), sc in items
        ]
        self._write("INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?, ?)", rows)

    # -- verdicts --
    def get_verdicts(self, fingerprint: str, contents: Sequence[str]) -> list[Verdict | None]:
        out: list[Verdict | None] = []
        with self._lock:
            for c in contents:
                row = self._db.execute(
                    "SELECT p_unsafe, categories FROM verdicts WHERE fingerprint=? AND content=?",
                    (fingerprint, c),
                ).fetchone()
                out.append(None if row is None else Verdict(float(row[0]), tuple(json.loads(row[1]))))
        return out

    def put_verdicts(self, fingerprint: str, items: Iterable[tuple[str, Verdict]]) -> None:
        rows = [(fingerprint, c, v.p_unsafe, json.dumps(list(v.categories))) for c, v in items]
        self._write("INSERT OR REPLACE INTO verdicts VALUES (?, ?, ?, ?)", rows)

    # -- reference log-probs --
    def get_ref(self, model_key: str, token_keys: Sequence[str]) -> list[np.ndarray | None]:
        out: list[np.ndarray | None] = []
        with self._lock:
            for k in token_keys:
                row = self._db.execute(
                    "SELECT data FROM ref_logprobs WHERE model_key=? AND tokens=?", (model_key, k)
                ).fetchone()
                out.append(None if row is None else np.frombuffer(row[0], dtype=np.float32).copy())
        return out

    def put_ref(self, model_key: str, items: Iterable[tuple[str, np.ndarray]]) -> None:
        rows = [(model_key, k, np.asarray(a, dtype=np.float32).tobytes()) for k, a in items]
        self._write("INSERT OR REPLACE INTO ref_logprobs VALUES (?, ?, ?)", rows)

    def _write(self, sql: str, rows: Sequence[tuple[object, ...]]) -> None:
        if not rows:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(sql, rows)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def count(self, table: str = "scores") -> int:
        if table not in ("scores", "verdicts", "ref_logprobs"):
            raise ValueError(f"unknown table {table!r}")
        with self._lock:
            return int(self._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

    def integrity_ok(self) -> bool:
        with self._lock:
            return bool(self._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok")

    def close(self) -> None:
        with self._lock:
            self._db.close()
