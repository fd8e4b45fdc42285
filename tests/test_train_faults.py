"""A training run survives its scorer's faults: killed and restarted (the trainer reconnecting while it is
down, while it loads, or after it is back), and one of three replicas killed and brought back.

Every run is a real `star-train` process (dss, full finetuning) against real `star-scorer` processes on
127.0.0.1. The test synchronises on what it can observe (the trainer's metrics.jsonl, the scorers'
metrics, connection attempts, SIGSTOP/SIGCONT of the trainer), never on sleeps, and each wait is bounded.
The final weights must equal an uninterrupted run's: scores move only in the last float bits with how a
scorer happens to batch requests, so 1e-4 is the tolerance.
"""

from __future__ import annotations

import json
import math
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from gated_scorer import GATE_ENV
from safetensors.torch import load_file

from star_client import ClientConfig
from star_testing import fork_server
from star_testing.scorer_process import ScorerProcess, free_port
from star_testing.tiny_chat import save_tiny_run

ROOT = Path(__file__).resolve().parent.parent
GATED = str(Path(__file__).with_name("gated_scorer.py"))
"""The real scorer CLI, its guard load held until a gate file exists."""
EXAMPLES, BATCH = 96, 4
STEPS = EXAMPLES // BATCH
WAIT_S = 120.0
"""Upper bound on every wait in this module (the runs take seconds)."""
pytestmark = pytest.mark.slow
STARTED: list[Trainer] = []
"""Every trainer started by the current test (`_no_trainer_left` kills what is still running)."""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_run(tmp_path_factory.mktemp("faults"), examples=EXAMPLES)


@pytest.fixture(scope="module")
def scorer_args(tiny_guard_dir: Path) -> list[str]:
    return ["--guard", str(tiny_guard_dir), "--preset", "llama-guard-3", "--max-wait-ms", "5"]


@pytest.fixture()
def scorers(tmp_path: Path, scorer_args: list[str]) -> Iterator[Callable[..., ScorerProcess]]:
    """`make(port=None, module=..., env=None)` -> a ScorerProcess (not started), stopped after the test."""
    made: list[ScorerProcess] = []

    def make(port: int | None = None, **kw: Any) -> ScorerProcess:
        log = tmp_path / f"scorer-{len(made)}.log"
        proc = ScorerProcess(scorer_args, log, port or free_port(), free_port(), **kw)
        made.append(proc)
        return proc

    yield make
    for p in made:
        p.stop(10)


@pytest.fixture(autouse=True)
def _no_trainer_left() -> Iterator[None]:
    """A test that fails while its trainer is paused (SIGSTOP) would leave it stopped for good."""
    yield
    while STARTED:
        proc = STARTED.pop().proc
        if proc.poll() is None:
            proc.kill()  # SIGKILL ends a stopped process too
            proc.wait(30)


class Trainer:
    """A `star-train` process (dss, full finetuning, one micro-batch of scores prefetched)."""

    def __init__(self, run_dir: Path, out: Path, scorer: str) -> None:
        self.out = out
        sets = {
            "model": run_dir / "trainee",
            "data": run_dir / "data.jsonl",
            "output_dir": out,
            "scorer": scorer,
            "method": "dss",
            "finetune": "full",
            "batch_size": BATCH,
            "lr": 1e-3,
            "prefetch_batches": 1,
            "torch_threads": 1,
            "scorer_deadline_s": WAIT_S,
        }
        cmd = [sys.executable, "-m", "trainer_client.train.cli", "--no-progress"]
        for k, v in sets.items():
            cmd += ["--set", f"{k}={v}"]
        self.log = out.with_suffix(".log")
        with self.log.open("wb") as log:
            self.proc = fork_server.popen(cmd, cwd=ROOT, stdout=log, stderr=log)
        STARTED.append(self)

    def steps(self) -> int:
        path = self.out / "metrics.jsonl"
        return len(path.read_text().splitlines()) if path.exists() else 0

    def wait_steps(self, n: int) -> None:
        wait_until(lambda: self.steps() >= n or self.proc.poll() is not None, f"step {n}")
        assert self.proc.poll() is None, f"the run ended before step {n}:\n{self.log.read_text()[-3000:]}"
        assert self.steps() < STEPS - 4, "too little of the run left to test a fault in"

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def finish(self) -> dict[str, Any]:
        """Wait for the run to end; its last stdout line (the summary), checked to be whole."""
        try:
            rc = self.proc.wait(WAIT_S)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        text = self.log.read_text()
        assert rc == 0, text[-3000:]
        summary = json.loads(text.strip().splitlines()[-1])
        assert summary["finished"] and summary["steps"] == STEPS
        assert summary["guard_requests"] == EXAMPLES  # every example's scores came from a scorer
        rows = self.rows()
        assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
        assert all(math.isfinite(r["mean_star"]) and 0.0 <= r["mean_star"] <= 1.0 for r in rows)
        return dict(summary)

    def rows(self) -> list[dict[str, float]]:
        return [json.loads(x) for x in (self.out / "metrics.jsonl").read_text().splitlines()]

    def weights(self) -> dict[str, torch.Tensor]:
        return load_file(str(self.out / "final" / "model.safetensors"))


def wait_until(cond: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise TimeoutError(f"gave up waiting for {what} after {timeout:.0f} s")
        time.sleep(0.01)


class DeadPort:
    """A listener on a killed scorer's port that accepts and at once closes every connection: what a
    client sees of a host whose scorer is gone (the connection fails), while the test counts the
    client's reconnect attempts."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(64)
        self.sock.settimeout(0.05)
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture(scope="module")
def reference(run_dir: Path, scorer_args: list[str], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The final weights of an uninterrupted run."""
    tmp = tmp_path_factory.mktemp("reference")
    server = ScorerProcess(scorer_args, tmp / "scorer.log", free_port(), free_port()).start()
    try:
        trainer = Trainer(run_dir, tmp / "run", server.address)
        trainer.finish()
        return trainer.weights()
    finally:
        server.stop(10)


def assert_same_weights(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys() and got
    worst = max(float((got[k].float() - want[k].float()).abs().max()) for k in want)
    assert worst <= 1e-4, worst


@pytest.mark.parametrize("reconnect", ["while-down", "while-loading", "after-restart"])
def test_scorer_killed_and_restarted_costs_time_not_the_run(
    reconnect: str, run_dir: Path, tmp_path: Path, scorers: Any, reference: Any
) -> None:
    first = scorers().start()
    trainer = Trainer(run_dir, tmp_path / "run", first.address)
    trainer.wait_steps(4)
    trainer.pause()  # the fault happens between two of the trainer's instructions, wherever they are
    first.kill()
    if reconnect == "while-down":
        dead = DeadPort(first.port)
        trainer.resume()
        wait_until(lambda: dead.accepted >= 2, "the trainer's reconnect attempts to the dead port")
        dead.close()
        scorers(port=first.port).start()
    elif reconnect == "while-loading":
        gate = tmp_path / "load-gate"
        loading = scorers(port=first.port, script=GATED, env={GATE_ENV: str(gate)})
        loading.launch().wait_listening()
        trainer.resume()
        wait_until(
            lambda: loading.metric("star_requests_total", code="UNAVAILABLE") >= 1,
            "a call refused while loading",
        )
        gate.touch()
        loading.wait_serving()
    else:
        scorers(port=first.port).start()
        trainer.resume()
    trainer.finish()
    assert_same_weights(trainer.weights(), reference)


def test_trainer_started_while_its_scorer_is_down_then_loading(
    run_dir: Path, tmp_path: Path, scorers: Any, reference: Any
) -> None:
    port = free_port()
    dead = DeadPort(port)
    trainer = Trainer(run_dir, tmp_path / "run", f"127.0.0.1:{port}")
    # Down for six of the client's reconnect attempts (their backoff reaches its 1 s cap), then loading
    # for ten refused calls: before retries were bounded by the deadline alone, the first failed
    # connection ended the run, and eight refusals did.
    wait_until(lambda: dead.accepted >= 6 or trainer.proc.poll() is not None, "6 reconnect attempts")
    dead.close()
    assert trainer.proc.poll() is None, trainer.log.read_text()[-3000:]
    gate = tmp_path / "load-gate"
    loading = scorers(port=port, script=GATED, env={GATE_ENV: str(gate)})
    loading.launch().wait_listening()
    refused = lambda: loading.metric("star_requests_total", code="UNAVAILABLE")  # noqa: E731
    wait_until(lambda: refused() >= 10 or trainer.proc.poll() is not None, "10 calls refused while loading")
    assert trainer.proc.poll() is None, trainer.log.read_text()[-3000:]
    gate.touch()
    trainer.finish()
    assert_same_weights(trainer.weights(), reference)


def test_one_of_three_replicas_killed_then_back(
    run_dir: Path, tmp_path: Path, scorers: Any, reference: Any
) -> None:
    a, b, c = (scorers().start() for _ in range(3))
    trainer = Trainer(run_dir, tmp_path / "run", ",".join(s.address for s in (a, b, c)))
    trainer.wait_steps(3)
    a.kill()  # no pause: the trainer goes on with b and c
    killed_at = trainer.steps()
    trainer.wait_steps(killed_at + 3)
    paused = time.perf_counter()  # the trainer's step times are perf_counter too (CLOCK_MONOTONIC)
    trainer.pause()
    back = scorers(port=a.port).start()  # a's address again, a fresh process
    # Stay paused until the client's down period for a's address has run out (at most the reconnect
    # backoff's cap): the first request after SIGCONT then probes `back`, and the probe waits for the
    # channel to connect (star_client.channel.PROBE_CONNECT_S) instead of failing on a call that raced
    # the reconnection, which sent `back` away for another second: longer than the steps left.
    cap = ClientConfig().reconnect_backoff_max_s
    wait_until(lambda: time.perf_counter() - paused > 1.5 * cap, "the reconnect backoff's cap")
    resumed = time.perf_counter()
    trainer.resume()
    trainer.finish()
    assert_same_weights(trainer.weights(), reference)
    # No step waited on the dead replica longer than the client's reconnect backoff allows: its
    # requests went to b and c at once. (Steps the test itself paused are left out.)
    rows = [r for r in trainer.rows() if r["t_end"] < paused or r["t_start"] > resumed]
    assert len(rows) >= STEPS - 2
    assert max(r["scorer_wait_s"] for r in rows) < cap, [r["scorer_wait_s"] for r in rows]
    # the replica that came back got work again
    assert back.metric("star_requests_total", code="OK", method="ScoreStreamRequest") > 0
