"""A fork server for the test suite: real processes without paying torch's import each time.

Every `star-scorer serve` or `star-train` a test starts spends about 4 CPU-seconds importing torch and
transformers (transformers' `modeling_utils` alone pulls in torch._dynamo and scipy) before it does any
work, and the suite starts some two hundred of them. The fork server is one process per pytest worker
that imports those third-party modules once and then forks a child per launch. The child is a real
process with its own pid, argv, environment, working directory, stdio, ports and exit code; it runs the
requested `-m module` or script from the top with `runpy`, so everything of ours is imported fresh and
the interpreter exits the normal way (threads joined, atexit run, exit code or signal reported).

What a forked child does not get, and when a fresh interpreter is used instead:
- third-party modules were imported under the fork server's environment. A launch whose environment
  differs in anything but `STAR_*`, `PYTEST_*` or `GRPC_*` variables (grpc is not preloaded), or in a
  PYTHONPATH with a folder that holds a module named as a preloaded one, gets a fresh interpreter (any
  other PYTHONPATH the child puts on sys.path itself), as do interpreter options and commands that are
  not `python -m` or a script. OpenMP read its `OMP_*` settings when torch loaded: `serve`'s own
  `OMP_WAIT_POLICY` default does not reach a forked scorer, which runs one thread in the tests anyway;
- tests about start-up itself (what is imported, how long it takes) start their processes directly.

On only when `STAR_FORK_SERVER=1` (tests/conftest.py sets it; `STAR_FORK_SERVER=0 pytest` runs every
process fresh). Only benchmarks/process_launch.py, which measures it, uses it outside the tests."""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Protocol

from star_testing.fork_server_process import PRELOAD

FREE_TO_DIFFER = ("STAR_", "PYTEST_", "GRPC_")
"""Environment variables no preloaded module reads at import time."""
ENABLE = "STAR_FORK_SERVER"
MAX_SERVERS = 3
"""Fork servers per test process at most: a test that flips its own environment back and forth gets
fresh interpreters after that, not a fork server per flip."""
REPORT = "STAR_FORK_SERVER_REPORT"
"""A file each test process appends its launch counts to at exit (forked, and why others were not)."""


class Process(Protocol):
    """What tests use of a started process: subprocess.Popen and ForkedProcess both have it."""

    pid: int
    returncode: int | None

    def poll(self) -> int | None: ...
    def wait(self, timeout: float | None = None) -> int: ...
    def send_signal(self, sig: int) -> None: ...
    def terminate(self) -> None: ...
    def kill(self) -> None: ...


class ForkedProcess:
    """A child of the fork server, driven like subprocess.Popen (poll, wait, signals). Its exit code
    arrives over the connection it was requested on; negative for a signal, as with Popen."""

    def __init__(self, args: Sequence[str], pid: int, conn: socket.socket) -> None:
        self.args = list(args)
        self.pid = pid
        self.returncode: int | None = None
        self._conn = conn

    def _read(self, timeout: float | None) -> None:
        if self.returncode is not None:
            return
        ready, _, _ = select.select([self._conn], [], [], timeout)
        if not ready:
            return
        msg = self._conn.recv(4096)
        self._conn.close()
        # The fork server went away before its child (end of session): report it as killed.
        self.returncode = int(json.loads(msg)["returncode"]) if msg else -signal.SIGKILL

    def poll(self) -> int | None:
        self._read(0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self._read(timeout)
        if self.returncode is None:
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkServer:
    """One fork server process, started with a fixed environment (the client side)."""

    def __init__(self, folder: Path, env: Mapping[str, str], preload: Sequence[str] = PRELOAD) -> None:
        self.env = dict(env)
        self.preload = tuple(preload)
        self.path = folder / "fork-server.sock"
        self._proc: subprocess.Popen[bytes] | None = None
        self._set_by_preload: dict[str, str] | None = None
        """Variables the preloaded imports set themselves (TORCHINDUCTOR_CACHE_DIR), once ready."""

    def start(self) -> None:
        """Launch the server process if it is not running; returns at once."""
        if self._proc is None:
            self.path.unlink(missing_ok=True)
            with self.path.with_suffix(".log").open("ab") as log:
                cmd = [
                    sys.executable,
                    "-m",
                    "star_testing.fork_server_process",
                    str(self.path),
                    *self.preload,
                ]
                root = Path(__file__).resolve().parents[1]
                self._proc = subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=self.env, cwd=root
                )

    def ready(self, timeout: float = 120.0) -> bool:
        """Wait until it has imported PRELOAD and listens; False if it died or never got there."""
        self.start()
        assert self._proc is not None
        end = time.monotonic() + timeout
        while self._set_by_preload is None:
            if self._proc.poll() is not None or time.monotonic() > end:
                return False
            if self.path.exists():
                self._set_by_preload = json.loads(Path(f"{self.path}.env").read_text())
            else:
                time.sleep(0.05)
        return True

    def differences(self, env: Mapping[str, str]) -> set[str]:
        """The variables of `env` that a preloaded module could have read differently (call `ready`)."""
        preload = self._set_by_preload or {}
        ours = {**self.env, **preload}
        differ = {k for k in {*env, *ours} if env.get(k) != ours.get(k)}
        differ -= {k for k in preload if k not in env}  # a fresh process sets these as it imports
        if "PYTHONPATH" not in self.env and not _shadows(env.get("PYTHONPATH", ""), self.preload):
            differ.discard("PYTHONPATH")  # the child puts it on sys.path as a fresh interpreter would
        return {k for k in differ if not k.startswith(FREE_TO_DIFFER)}

    def spawn(
        self,
        cmd: Sequence[str],
        env: Mapping[str, str],
        cwd: Path | str,
        stdio: tuple[int, int, int],
    ) -> ForkedProcess | None:
        """A forked child running `cmd` under `env`; None if the server is gone."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            sock.connect(str(self.path))
            env = {**(self._set_by_preload or {}), **env}
            request = {"argv": list(cmd[1:]), "env": env, "cwd": str(cwd)}
            socket.send_fds(sock, [json.dumps(request).encode()], list(stdio))
            reply = sock.recv(4096)
        except OSError:
            reply = b""
        if not reply:
            sock.close()
            return None
        return ForkedProcess(cmd, int(json.loads(reply)["pid"]), sock)

    def close(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(10)


def _shadows(pythonpath: str, preload: Sequence[str]) -> bool:
    """Whether a folder on `pythonpath` holds a module of the same top-level name as a preloaded one
    (a fresh interpreter would import that one instead)."""
    tops = {name.split(".")[0] for name in preload}
    for entry in filter(None, pythonpath.split(os.pathsep)):
        if any((Path(entry) / t).is_dir() or (Path(entry) / f"{t}.py").is_file() for t in tops):
            return True
    return False


class Launcher:
    """This process's fork servers: the first, and one more (up to MAX_SERVERS) each time this process's
    own environment has changed in what the preloaded modules read (a test run in-process may set a
    variable for good). A launch goes to a server whose environment it matches; every server stays
    until the end, as its children report their exit through it. Counts what was forked and why the
    rest started fresh (STAR_FORK_SERVER_REPORT)."""

    def __init__(self, folder: Path, preload: Sequence[str] = PRELOAD) -> None:
        self.folder = folder
        self.preload = tuple(preload)
        self.servers = [ForkServer(folder / "0", os.environ, self.preload)]
        self.counts: dict[str, int] = {}

    def start(self) -> None:
        (self.folder / "0").mkdir(parents=True, exist_ok=True)
        self.servers[-1].start()

    def _count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def spawn(
        self,
        cmd: Sequence[str],
        env: Mapping[str, str],
        cwd: Path | str,
        stdio: tuple[int, int, int],
    ) -> ForkedProcess | None:
        """A forked child, or None where `cmd` must start fresh (counted with the reason)."""
        module = len(cmd) > 2 and cmd[1] == "-m"
        script = len(cmd) > 1 and not cmd[1].startswith("-") and cmd[1].endswith(".py")
        if not (cmd[0] == sys.executable and (module or script)):
            self._count("fresh: not `python -m module` or `python script.py`")
            return None
        if not self.servers[0].ready():
            self._count("fresh: the fork server did not start (see its log)")
            return None
        server = next((s for s in self.servers if s.ready() and not s.differences(env)), None)
        changed = {k for k in {*env, *os.environ} if env.get(k) != os.environ.get(k)}
        like_ours = all(k.startswith(FREE_TO_DIFFER) for k in changed)
        # this process's own environment changed since its fork servers started: one more
        if server is None and like_ours and len(self.servers) < MAX_SERVERS:
            folder = self.folder / str(len(self.servers))
            folder.mkdir()
            self.servers.append(ForkServer(folder, os.environ, self.preload))
            self._count("new fork server: " + ", ".join(sorted(self.servers[0].differences(env))))
            if self.servers[-1].ready() and not self.servers[-1].differences(env):
                server = self.servers[-1]
        if server is None:
            differ = self.servers[0].differences(env)
            self._count("fresh: the environment differs in " + ", ".join(sorted(differ)))
            return None
        child = server.spawn(cmd, env, cwd, stdio)
        self._count("forked" if child is not None else "fresh: the fork server is gone")
        return child

    def close(self) -> None:
        for server in self.servers:
            server.close()
        if path := os.environ.get(REPORT):
            with open(path, "a") as fh:
                fh.write(json.dumps({"pid": os.getpid(), "launches": self.counts}) + "\n")


_LAUNCHER: Launcher | None = None


def enabled() -> bool:
    return os.environ.get(ENABLE) == "1"


def prestart() -> None:
    """Start this process's fork server in the background (when enabled), so it has imported torch by
    the time the first test launches something; it stops, and its folder goes, when this process ends."""
    global _LAUNCHER
    if enabled() and _LAUNCHER is None:
        import shutil
        import tempfile

        folder = Path(tempfile.mkdtemp(prefix="star-fork-"))  # short: a socket path has 107 bytes
        _LAUNCHER = Launcher(folder)
        _LAUNCHER.start()
        atexit.register(shutil.rmtree, folder, True)
        atexit.register(_LAUNCHER.close)


def popen(
    cmd: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
    stdout: IO[Any] | int | None = None,
    stderr: IO[Any] | int | None = None,
    fresh: bool = False,
) -> Process:
    """subprocess.Popen(cmd, ...), forked from the fork server where that behaves the same (never with
    `fresh`); stdin is /dev/null. stdout/stderr: an open file, a file descriptor, or None (ours)."""
    env = dict(os.environ if env is None else env)
    cwd = os.getcwd() if cwd is None else cwd
    if _LAUNCHER is not None and enabled() and not fresh:
        with open(os.devnull, "rb") as devnull:
            fds = (devnull.fileno(), _fd(stdout, 1), _fd(stderr, 2))
            forked = _LAUNCHER.spawn(cmd, env, cwd, fds)
        if forked is not None:
            return forked
    return subprocess.Popen(
        list(cmd), stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, env=env, cwd=cwd
    )


def run(
    cmd: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
    timeout: float = 300.0,
) -> subprocess.CompletedProcess[str]:
    """subprocess.run(cmd, capture_output=True, text=True, stdin=DEVNULL), through `popen`; the process is
    killed past `timeout` (subprocess.TimeoutExpired)."""
    import tempfile

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = popen(cmd, env=env, cwd=cwd, stdout=out, stderr=err)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            raise
        out.seek(0)
        err.seek(0)
        text = [f.read().decode(errors="replace") for f in (out, err)]
    return subprocess.CompletedProcess(list(cmd), code, text[0], text[1])


def _fd(stream: IO[Any] | int | None, default: int) -> int:
    if stream is None:
        return default
    return stream if isinstance(stream, int) else stream.fileno()
