"""The scores file of the published offline mode: one JSON record per scored turn (and per verdict).

`star-score-dataset` writes it with `score_record` / `verdict_record`; `scores_file` in a recipe reads
it back through `FileScorer`, which answers exactly the requests of the dataset it was made for.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from star_contract.types import Conversation, GuardInfo, ScoreRequest, Segment, StarScores, Verdict
from trainer_client.data import conversation_hash
from trainer_client.scoring.prefetch import cut_key


def score_record(fingerprint: str, request: ScoreRequest, scores: StarScores) -> dict[str, Any]:
    """The record of one scored request."""
    return {
        "fingerprint": fingerprint,
        "content": conversation_hash(request.conversation),
        "cut_key": cut_key(request),
        "segments": [[g.end, g.p_safe] for g in scores.segments],
    }


def verdict_record(fingerprint: str, conversation: Conversation, p_unsafe: float) -> dict[str, Any]:
    """The record of one whole-response verdict."""
    return {"fingerprint": fingerprint, "content": conversation_hash(conversation), "p_unsafe": p_unsafe}


class FileScorer:
    """Scores from a precomputed JSONL (the published offline mode); unknown requests are an error."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ValueError(f"scores file {path} does not exist")
        self._scores: dict[tuple[str, str], StarScores] = {}
        self._verdicts: dict[str, Verdict] = {}
        fps: set[str] = set()
        with self.path.open(encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    fps.add(rec["fingerprint"])
                    if "segments" in rec:
                        segs = tuple(Segment(int(e), float(p)) for e, p in rec["segments"])
                        self._scores[(rec["content"], rec["cut_key"])] = StarScores(segs)
                    else:
                        self._verdicts[rec["content"]] = Verdict(float(rec["p_unsafe"]))
                except (KeyError, ValueError, TypeError) as e:
                    raise ValueError(f"{path}:{n}: not a score record ({e})") from None
        if len(fps) > 1:
            raise ValueError(f"{path} mixes scores from {len(fps)} different guards")
        self.fingerprint = fps.pop() if fps else "empty"

    async def info(self) -> GuardInfo:
        return GuardInfo("file", "file", "", "", -1, -1, self.fingerprint, backend=f"file:{self.path}")

    async def score_many(self, requests: Sequence[ScoreRequest], priority: int = 0) -> list[StarScores]:
        out = []
        for r in requests:
            key = (conversation_hash(r.conversation), cut_key(r))
            if key not in self._scores:
                raise ValueError(
                    f"{self.path} has no scores for a conversation of this dataset (content {key[0][:12]}, "
                    "cuts differ or the data changed); rerun star-score-dataset with the same recipe"
                )
            out.append(self._scores[key])
        return out

    async def judge(self, conversations: Sequence[Conversation]) -> list[Verdict]:
        out = []
        for c in conversations:
            h = conversation_hash(c)
            if h not in self._verdicts:
                raise ValueError(f"{self.path} has no verdict for conversation {h[:12]}")
            out.append(self._verdicts[h])
        return out

    async def close(self) -> None:
        return None
