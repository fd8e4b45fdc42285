"""The fork server's own process (star_testing.fork_server starts it): imports PRELOAD once, then forks
one child per request and reports each child's exit code to whoever asked for it.

Run as `python -m star_testing.fork_server_process SOCKET [MODULE ...]` (the modules to preload; PRELOAD
without any). The fork happens inside `serve`, which
returns only in the child; the child then runs its command from the top level of this module, so the
command's SystemExit, uncaught exception or normal end finishes the interpreter the usual way."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import sys
from pathlib import Path
from typing import Any

PRELOAD = (
    "torch",
    "transformers",
    "transformers.modeling_utils",
    "transformers.models.auto.modeling_auto",
    "transformers.models.auto.tokenization_auto",
    "transformers.models.llama.modeling_llama",
    "safetensors.torch",
    "tokenizers",
    "jinja2",
    "numpy",
)
"""Third-party modules the fork server imports before it forks anything (never ours, never grpc)."""


class _Job:
    """What a forked child runs: `python -m module args` or `python script.py args`."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv

    def run(self) -> None:
        import runpy

        if self.argv[0] == "-m":
            sys.argv = [self.argv[1], *self.argv[2:]]
            sys.path[0] = os.getcwd()
            runpy.run_module(self.argv[1], run_name="__main__", alter_sys=True)
        else:
            script = self.argv[0]
            sys.argv = list(self.argv)
            sys.path[0] = os.path.dirname(os.path.realpath(script))
            runpy.run_path(script, run_name="__main__")


def serve(path: str, preload: tuple[str, ...] = PRELOAD) -> _Job:
    """Import `preload`, then fork a child per request; returns only in a child, set up as asked."""
    import gc
    import importlib

    before = dict(os.environ)
    for name in preload:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    parent = os.getppid()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path + ".tmp")
    listener.listen(64)
    set_by_preload = {k: v for k, v in os.environ.items() if before.get(k) != v}
    Path(f"{path}.env").write_text(json.dumps(set_by_preload))  # e.g. TORCHINDUCTOR_CACHE_DIR
    os.rename(path + ".tmp", path)  # connectable only once everything is imported
    waiting: dict[int, socket.socket] = {}
    gc.freeze()  # the preloaded objects stay shared with the children instead of copied by the GC
    while True:
        readable, _, _ = select.select([listener.fileno(), wake_r], [], [], 1.0)
        if os.getppid() != parent:
            raise SystemExit(0)
        if wake_r in readable:
            os.read(wake_r, 4096)
        _reap(waiting)
        if listener.fileno() not in readable:
            continue
        conn, _ = listener.accept()
        msg, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
        if not msg or len(fds) != 3:  # the client changed its mind (a launch that must start fresh)
            for fd in fds:
                os.close(fd)
            conn.close()
            continue
        request = json.loads(msg)
        pid = os.fork()
        if pid == 0:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            for s in (listener, conn, *waiting.values()):
                s.close()
            os.close(wake_r)
            os.close(wake_w)
            _become(request, fds)
            return _Job(request["argv"])
        for fd in fds:
            os.close(fd)
        conn.send(json.dumps({"pid": pid}).encode())
        waiting[pid] = conn


def _become(request: dict[str, Any], fds: list[int]) -> None:
    """In the child: the stdio, working directory and environment a fresh process would have."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    for fd in fds:
        if fd > 2:
            os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    # PYTHONPATH's folders come right after sys.path[0] (made absolute), as at a fresh start; the
    # client forks only where none of them shadows a preloaded module.
    entries = [os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[1:1] = entries
    if "numpy" in sys.modules:  # a fresh process seeds numpy's global generator from the OS
        sys.modules["numpy"].random.seed()


def _reap(waiting: dict[int, socket.socket]) -> None:
    while waiting:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = waiting.pop(pid, None)
        if conn is not None:
            code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            with contextlib.suppress(OSError):  # the test that started it may be gone
                conn.send(json.dumps({"returncode": code}).encode())
            conn.close()


if __name__ == "__main__":
    serve(sys.argv[1], tuple(sys.argv[2:]) or PRELOAD).run()
