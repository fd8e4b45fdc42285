"""A scorer address where nothing listens: a clear UNAVAILABLE 'cannot reach' error within the deadline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from star_client.channel import reconnect_delay
from star_testing.scorer_process import free_port

REPO = Path(__file__).resolve().parent.parent


def test_reconnect_delay_stays_finite_after_many_failures() -> None:
    # the old formula 0.05 * 2 ** (failures - 1) raised OverflowError past about 1030 failures
    assert reconnect_delay(1, 1.0) == 0.05
    assert reconnect_delay(2, 1.0) == 0.1
    assert reconnect_delay(5000, 1.0) == 1.0
    assert reconnect_delay(10**9, 3.5) == 3.5
    assert reconnect_delay(0, 1.0) == 0.05


def _dead_port() -> int:
    return free_port()  # nothing listens there, and no other xdist worker hands it out


def test_score_against_dead_address_fails_clearly_within_deadline(tmp_path: Path) -> None:
    port = _dead_port()
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"prompt": "q", "response": "one two three four five six"}) + "\n")
    deadline = 4.0
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [
        sys.executable,
        "-m",
        "star_client.cli",
        "score",
        "--server",
        f"127.0.0.1:{port}",
        "--deadline",
        str(deadline),
        "--in",
        str(inp),
        "--out",
        str(tmp_path / "out.jsonl"),
    ]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 2, proc.stderr
    assert f"cannot reach 127.0.0.1:{port}" in proc.stderr
    assert "UNAVAILABLE" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "Task exception was never retrieved" not in proc.stderr
    assert "OverflowError" not in proc.stderr
    assert elapsed < deadline + 10.0, elapsed  # interpreter start-up plus the deadline, not 40 s
