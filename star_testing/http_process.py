"""An HTTP server subprocess on 127.0.0.1 (the gateway, a test upstream, a real vLLM or LiteLLM), started
and waited for until its health route answers, stopped with SIGTERM (SIGKILL past the grace).

A server that is several processes (vLLM: the API server, its engine core and worker) starts in a
process group of its own (`own_group`), and stopping or killing it ends the whole group: killing only
the first process leaves the others running, reparented to init, for as long as the machine runs."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Self

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
    own_group: bool = False
    """Start it as the leader of a new process group, and signal the whole group."""
    proc: fork_server.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> Self:
        """Launch and wait until it answers."""
        return self.launch().wait(timeout)

    def launch(self) -> Self:
        """Start the process and return at once (see `wait`)."""
        env = {**os.environ, "OMP_NUM_THREADS": "1", **(self.env or {})}
        with self.log_path.open("ab") as log:
            if self.own_group:  # the fork server's children share its group
                self.proc = subprocess.Popen(
                    self.cmd, stdout=log, stderr=log, env=env, cwd=ROOT, start_new_session=True
                )
            else:  # forked from the tests' fork server where it is on
                self.proc = fork_server.popen(self.cmd, env=env, cwd=ROOT, stdout=log, stderr=log)
        return self

    def wait(self, timeout: float = 60.0) -> Self:
        """Poll the health route until it answers 200; RuntimeError if the process exits, TimeoutError
        after `timeout` s (the process is stopped then, as it is after an exit)."""
        assert self.proc is not None
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                self.stop()  # what is left of its group
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
        """SIGTERM, then SIGKILL past `timeout` (with `own_group`, to every process of the group)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self._signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        self.kill()

    def kill(self, timeout: float = 30.0) -> None:
        """SIGKILL (a server dying as a pod dies); returns once nothing of it runs."""
        if self.proc is None:
            return
        self._signal(signal.SIGKILL)
        self.proc.wait(timeout)
        end = time.monotonic() + timeout
        while (left := self.processes()) and time.monotonic() < end:
            time.sleep(0.05)  # a killed process takes a moment to die
        if left:
            raise RuntimeError(f"{self.cmd[:3]}: processes {left} outlived SIGKILL for {timeout:g} s")

    def processes(self) -> list[int]:
        """Its live processes: the group's with `own_group`, else the process itself while it runs."""
        if self.proc is None:
            return []
        if self.own_group:
            return live_group_members(self.proc.pid)
        return [self.proc.pid] if self.proc.poll() is None else []

    def _signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        if self.own_group:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
        elif self.proc.poll() is None:
            self.proc.send_signal(sig)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def live_group_members(pgid: int) -> list[int]:
    """Pids in process group `pgid` that are not zombies (a killed process whose new parent does not
    reap it stays a zombie, and a zombie holds nothing)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids
