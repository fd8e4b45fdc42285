"""The toy demo's scorer: `star-scorer serve` on a guard directory, as a subprocess on a free port."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def scorer_process(guard_dir: Path, threads: int, log_path: Path, timeout_s: float = 120.0) -> Iterator[str]:
    """Run `star-scorer serve` on the guard as a subprocess; yields its address once it answers."""
    from star_client import ScorerClient

    port = _free_port()
    exe = shutil.which("star-scorer")
    cmd = [exe] if exe else [sys.executable, "-m", "scorer_server.cli"]
    cmd += ["serve", "--guard", str(guard_dir), "--preset", "llama-guard-3", "--host", "127.0.0.1",
            "--port", str(port), "--metrics-port", "0", "--threads", str(threads)]  # fmt: skip
    addr = f"127.0.0.1:{port}"
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
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
