"""The toy demo's scorer: `star-scorer serve` on a guard directory, as a subprocess on a free port."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(args: list[str], log: IO[str]) -> Any:
    """Start `star-scorer ARGS` with its output to `log`; returns the Popen."""
    exe = shutil.which("star-scorer")
    cmd = [exe] if exe else [sys.executable, "-m", "scorer_server.cli"]
    return subprocess.Popen([*cmd, *args], stdout=log, stderr=subprocess.STDOUT)


LAUNCH: Callable[[list[str], IO[str]], Any] = launch
"""How `scorer_process` starts the scorer. The tests start it through their fork server instead (the
same command, a process that did not import torch again): tests/conftest.py, `forked_toy_scorers`."""


@contextmanager
def scorer_process(guard_dir: Path, threads: int, log_path: Path, timeout_s: float = 120.0) -> Iterator[str]:
    """Run `star-scorer serve` on the guard as a subprocess; yields its address once it answers."""
    from star_client import ScorerClient

    port = _free_port()
    args = ["serve", "--guard", str(guard_dir), "--preset", "llama-guard-3", "--host", "127.0.0.1",
            "--port", str(port), "--metrics-port", "0", "--threads", str(threads)]  # fmt: skip
    addr = f"127.0.0.1:{port}"
    with log_path.open("w") as log:
        proc = LAUNCH(args, log)
        try:
            deadline = time.time() + timeout_s
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"the scorer exited with code {proc.returncode}; see {log_path}")
                try:
                    with ScorerClient(addr) as client:
                        client.info()
                    break
                except Exception as exc:
                    if time.time() > deadline:
                        raise RuntimeError(
                            f"the scorer did not answer within {timeout_s:.0f} s: {exc}"
                        ) from exc
                    time.sleep(0.5)
            yield addr
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
