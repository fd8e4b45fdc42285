"""An HTTP server subprocess on 127.0.0.1 (the gateway, a test upstream), started and waited for until
its health route answers, stopped with SIGTERM (SIGKILL past the grace)."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from star_testing import fork_server

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class HttpProcess:
    """`cmd` serving HTTP on 127.0.0.1:`port`; its output goes to `log_path`."""

    cmd: list[str]
    port: int
    log_path: Path
    health: str = "/health"
    env: dict[str, str] | None = None
    proc: fork_server.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> HttpProcess:
        """Launch and wait until it answers."""
        return self.launch().wait(timeout)

    def launch(self) -> HttpProcess:
        """Start the process and return at once (see `wait`)."""
        env = {**os.environ, "OMP_NUM_THREADS": "1", **(self.env or {})}
        with self.log_path.open("ab") as log:  # forked from the tests' fork server where it is on
            self.proc = fork_server.popen(self.cmd, env=env, cwd=ROOT, stdout=log, stderr=log)
        return self

    def wait(self, timeout: float = 60.0) -> HttpProcess:
        """Poll the health route until it answers 200; RuntimeError if the process exits, TimeoutError
        after `timeout` s (the process is stopped then)."""
        assert self.proc is not None
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.cmd[:3]} exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + self.health, timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"{self.cmd[:3]} did not answer within {timeout:g} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
