"""The sqlite score cache: round trips, keys, and crash safety."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from star_contract.types import Segment, StarScores, Verdict
from trainer_client.scoring.cache import ScoreCache, tokens_hash


def test_round_trip(tmp_path: Path) -> None:
    c = ScoreCache(tmp_path / "c.sqlite")
    sc = StarScores((Segment(3, 0.25), Segment(9, 0.75)), guard_tokens=17)
    c.put_scores([(("fp", "h1", "offsets:3,9"), sc)])
    assert c.get_scores(
        [("fp", "h1", "offsets:3,9"), ("fp2", "h1", "offsets:3,9"), ("fp", "h1", "words:5")]
    ) == [
        sc,
        None,
        None,
    ]
    c.put_verdicts("fp", [("h1", Verdict(0.8, ("S1",)))])
    assert c.get_verdicts("fp", ["h1", "h2"]) == [Verdict(0.8, ("S1",)), None]
    a = np.array([-1.5, -0.25], dtype=np.float32)
    c.put_ref("m", [(tokens_hash([1, 2, 3]), a)])
    got = c.get_ref("m", [tokens_hash([1, 2, 3]), tokens_hash([1, 2])])
    assert got[0] is not None and np.array_equal(got[0], a) and got[1] is None
    c.close()
    again = ScoreCache(tmp_path / "c.sqlite")
    assert again.get_scores([("fp", "h1", "offsets:3,9")]) == [sc]
    assert again.hits == 1


_WRITER = """
import sys
from star_contract.types import Segment, StarScores
from trainer_client.scoring.cache import ScoreCache
c = ScoreCache(sys.argv[1])
i = 0
while True:
    c.put_scores([(("fp", f"h{i}-{j}", "k"), StarScores((Segment(1, 0.5),) * 20)) for j in range(50)])
    if i == 0:
        print("ready", flush=True)  # one transaction committed; the writer goes on writing
    i += 1
"""


def test_kill_mid_write_leaves_it_intact(tmp_path: Path) -> None:
    db = tmp_path / "crash.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(db)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    time.sleep(0.2)  # not synchronisation: only lets the kill land in some later write
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    c = ScoreCache(db)
    assert c.integrity_ok()
    n = c.count()
    assert n > 0 and n % 50 == 0  # only whole transactions survive
    assert all(s is not None for s in c.get_scores([("fp", "h0-0", "k"), ("fp", "h0-49", "k")]))
