"""The test suite's fork server (star_testing.fork_server) gives the processes tests start everything a
fresh `python` would: argv, environment, working directory, stdio, exit codes, signals, atexit and
thread joins at exit, and falls back to a fresh interpreter where a fork could differ."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from star_testing import fork_server
from star_testing.scorer_process import ScorerProcess, free_port

LIGHT_PRELOAD = "xml.dom.minidom"
"""A standard module a fresh interpreter does not import: what a fork server preloads where torch would
only cost time."""
SCRIPT = """
import atexit, json, os, sys, threading, time
mode = sys.argv[1]
atexit.register(lambda: print("atexit ran", flush=True))
if mode == "report":
    import numpy
    print(json.dumps({
        "argv": sys.argv, "cwd": os.getcwd(), "env": os.environ.get("STAR_PROBE"),
        "loaded_before_us": LOADED_AT_START, "pid": os.getpid(), "path0": sys.path[0], "path1": sys.path[1],
        "name": __name__, "draw": float(numpy.random.random()),
    }))
elif mode == "exit":
    print("to stderr", file=sys.stderr)
    sys.exit(int(sys.argv[2]))
elif mode == "raise":
    raise ValueError("boom")
elif mode == "thread":
    threading.Thread(target=lambda: (time.sleep(0.3), print("thread done", flush=True))).start()
elif mode == "sleep":
    print("sleeping", flush=True)
    time.sleep(60)
"""


@pytest.fixture(scope="module")
def script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fork") / "child.py"
    probe = f"LOADED_AT_START = sorted(m for m in ('torch', {LIGHT_PRELOAD!r}) if m in sys.modules)\n"
    path.write_text("import sys\n" + probe + SCRIPT)
    return path


@pytest.fixture(autouse=True)
def _fork_server_on() -> None:
    if not fork_server.enabled():
        pytest.skip("STAR_FORK_SERVER=0: every process starts fresh")


def report(script: Path, tmp_path: Path, **env: str) -> dict[str, object]:
    import json

    done = fork_server.run(
        [sys.executable, str(script), "report", "x y"], env={**os.environ, **env}, cwd=tmp_path, timeout=60
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == "atexit ran"
    return dict(json.loads(lines[0]))


def test_a_forked_child_has_its_own_argv_environment_and_directory(script: Path, tmp_path: Path) -> None:
    first = report(script, tmp_path, STAR_PROBE="one")
    second = report(script, tmp_path, STAR_PROBE="two")
    assert first["loaded_before_us"] == ["torch"]  # forked: torch came with the fork server
    assert first["argv"] == [str(script), "report", "x y"] and first["name"] == "__main__"
    assert first["cwd"] == str(tmp_path) and first["path0"] == str(script.parent)
    assert (first["env"], second["env"]) == ("one", "two")
    assert first["pid"] not in (second["pid"], os.getpid())
    assert first["draw"] != second["draw"]  # numpy's global generator is reseeded, as in a new process


def test_an_environment_the_preloaded_modules_could_read_gets_a_fresh_interpreter(
    script: Path, tmp_path: Path
) -> None:
    fresh = report(script, tmp_path, OMP_NUM_THREADS="7", STAR_PROBE="p")
    assert fresh["loaded_before_us"] == [] and fresh["env"] == "p"


def test_pythonpath_goes_on_sys_path_and_one_shadowing_a_preloaded_module_starts_fresh(
    script: Path, tmp_path: Path
) -> None:
    ours = tmp_path / "ours"
    (ours / "star_probe_pkg").mkdir(parents=True)
    forked = report(script, tmp_path, PYTHONPATH="ours")
    assert forked["loaded_before_us"] == ["torch"] and forked["path1"] == str(ours)  # made absolute
    shadow = tmp_path / "shadow"
    shadow.mkdir()  # a numpy of its own, which the preloaded one would hide
    (shadow / "numpy.py").write_text("class random:\n    random = staticmethod(lambda: 42.0)\n")
    fresh = report(script, tmp_path, PYTHONPATH=str(shadow))
    assert fresh["loaded_before_us"] == [] and fresh["draw"] == 42.0


def test_exit_codes_stderr_and_uncaught_exceptions_are_those_of_a_fresh_process(
    script: Path, tmp_path: Path
) -> None:
    done = fork_server.run([sys.executable, str(script), "exit", "3"], cwd=tmp_path, timeout=60)
    assert (done.returncode, done.stderr, done.stdout) == (3, "to stderr\n", "atexit ran\n")
    done = fork_server.run([sys.executable, str(script), "raise"], cwd=tmp_path, timeout=60)
    assert done.returncode == 1
    assert "Traceback" in done.stderr and done.stderr.rstrip().endswith("ValueError: boom")
    done = fork_server.run([sys.executable, str(script), "thread"], cwd=tmp_path, timeout=60)
    assert done.stdout.splitlines() == ["thread done", "atexit ran"]  # non-daemon threads are joined


def test_signals_reach_the_child_and_its_end_is_reported(script: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with out.open("wb") as log:
        proc = fork_server.popen([sys.executable, str(script), "sleep"], cwd=tmp_path, stdout=log)
    assert isinstance(proc, fork_server.ForkedProcess)
    end = time.monotonic() + 30
    while out.read_text() != "sleeping\n" and time.monotonic() < end:
        time.sleep(0.02)
    assert proc.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(10) == -signal.SIGKILL and proc.poll() == -signal.SIGKILL
    proc.kill()  # a no-op once it has ended, as with Popen


def test_a_forked_scorer_answers_as_a_fresh_one(tiny_guard_dir: Path, tmp_path: Path) -> None:
    """The fork server's reason to exist is the scorer: the same Score request to a forked and to a
    freshly started `star-scorer serve` gets the same segments."""
    from star_client import ScorerClient
    from star_contract.types import Conversation, CutSpec, ScoreRequest

    conv = Conversation.from_pair("How do I bake bread?", "Mix flour, water and yeast, then wait.")
    request = ScoreRequest(conv, CutSpec(every=2))
    results = []
    for fresh in (False, True):
        args = ["--guard", str(tiny_guard_dir), "--preset", "llama-guard-3"]
        srv = ScorerProcess(args, tmp_path / f"{fresh}.log", free_port(), free_port(), fresh=fresh)
        try:
            srv.start()
            assert isinstance(srv.proc, fork_server.ForkedProcess) != fresh
            client = ScorerClient(srv.address)
            try:
                results.append(client.score(request))
            finally:
                client.close()
        finally:
            assert srv.stop(10) == 0
    assert results[0] == results[1] and len(results[0].segments) > 2


def test_a_process_whose_own_environment_changed_gets_one_more_fork_server(
    script: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A test run in-process may set a variable for good (star-demo sets TOKENIZERS_PARALLELISM): later
    launches get a fork server started under the new environment, and launches under the old one go
    back to the first; a child's own difference still starts it fresh. (Its fork servers preload one
    small module instead of torch: what is tested is which server a launch goes to.)"""
    import json

    launcher = fork_server.Launcher(tmp_path / "servers", preload=(LIGHT_PRELOAD,))
    launcher.start()

    def launch(env: dict[str, str]) -> bool:
        out = tmp_path / "out.json"
        with out.open("wb") as fh, open(os.devnull, "rb") as devnull:
            cmd = [sys.executable, str(script), "report"]
            child = launcher.spawn(cmd, env, tmp_path, (devnull.fileno(), fh.fileno(), fh.fileno()))
        if child is None:
            return False
        assert child.wait(60) == 0
        report = json.loads(out.read_text().splitlines()[0])
        assert report["env"] == env.get("STAR_PROBE") and report["loaded_before_us"] == [LIGHT_PRELOAD]
        return True

    try:
        assert launch({**os.environ, "STAR_PROBE": "first"})
        monkeypatch.setenv("FORK_SERVER_TEST_VARIABLE", "1")
        assert launch({**os.environ, "STAR_PROBE": "changed"})
        monkeypatch.delenv("FORK_SERVER_TEST_VARIABLE")
        assert launch({**os.environ, "STAR_PROBE": "back"})
        assert not launch({**os.environ, "OMP_NUM_THREADS": "7"})
    finally:
        launcher.close()
    assert launcher.counts == {
        "forked": 3,
        "new fork server: FORK_SERVER_TEST_VARIABLE": 1,
        "fresh: the environment differs in OMP_NUM_THREADS": 1,
    }
    assert len(launcher.servers) == 2


RANK_SCRIPT = """
import json, os, sys
import torch
import torch.distributed as dist
dist.init_process_group("gloo")
rank = dist.get_rank()
total = torch.tensor([float(rank + 1)])
dist.all_reduce(total)
env = {k: os.environ[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
out = {"argv": sys.argv[1:], "sum": float(total), "env": env, "name": __name__}
open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w").write(json.dumps(out))
dist.destroy_process_group()
if len(sys.argv) > 2 and rank == 1:
    sys.exit(int(sys.argv[2]))
"""


def test_forked_ranks_meet_as_torchrun_ranks_do_and_a_failed_rank_fails_the_launch(tmp_path: Path) -> None:
    """star_testing.fork_ranks: two ranks with torchrun's environment meet in a gloo group (an
    all_reduce over both); a rank that exits non-zero makes the launch exit 1, naming the rank."""
    import json

    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    root = Path(__file__).resolve().parents[1]

    def launch(*args: str) -> subprocess.CompletedProcess[str]:
        port = str(free_port())
        cmd = [sys.executable, "-m", "star_testing.fork_ranks", "--nproc", "2", "--master-port", port]
        return fork_server.run([*cmd, str(script), *args], cwd=root, timeout=120)

    done = launch(str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["sum"] for r in ranks] == [3.0, 3.0]
    assert [r["env"]["RANK"] for r in ranks] == ["0", "1"] and ranks[0]["env"]["WORLD_SIZE"] == "2"
    assert ranks[0]["argv"] == [str(tmp_path)] and ranks[0]["name"] == "__main__"
    failed = launch(str(tmp_path), "3")
    assert failed.returncode == 1
    assert "exited with 3" in failed.stderr and "rank" in failed.stderr.lower(), failed.stderr[-3000:]
