"""Closing the blocking ScorerClient leaves nothing behind: no pending task, no late gRPC callback.

Before the fix, closing cancelled the ScoreStream and stopped the client's loop at once; gRPC's own status
task of the cancelled call was then destroyed pending ("Task was destroyed but it is pending!") and the
core's late completion hit the closed loop ("RuntimeError: Event loop is closed"), in about one close
in five.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent(
    """
    import asyncio, gc, sys
    from star_contract.types import Conversation, CutSpec, ScoreRequest
    from star_client import ScorerClient

    for i in range(int(sys.argv[2])):
        client = ScorerClient(sys.argv[1])
        client.info()
        client.score(ScoreRequest(Conversation.from_pair("q", f"a b c {i}"), CutSpec()))
        client.score_many([ScoreRequest(Conversation.from_pair("q", "x " * k), CutSpec()) for k in (1, 2, 3)])
        client.judge([Conversation.from_pair("q", "a b")])
        loop = client._loop
        client.close()
        left = asyncio.all_tasks(loop)
        assert not left, left
        del client, loop
        gc.collect()
    print("closed cleanly", flush=True)
    """
)


def test_closing_after_use_leaves_no_pending_task(default_server: Any) -> None:
    srv = default_server
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, srv.address, "20"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "closed cleanly" in proc.stdout
    for symptom in ("Task was destroyed but it is pending", "Event loop is closed", "Traceback"):
        assert symptom not in proc.stderr, proc.stderr[-3000:]
