"""Shared fixtures: a tiny guard built once per session, and real scorer servers in subprocesses."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from star_testing.real_guards import require_guard_templates
from star_testing.scorer_process import ScorerProcess, free_port
from star_testing.tiny_guard import TinyGuardSpec, save_tiny_guard

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_guard_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama-Guard-shaped guard directory, built once per test session."""
    return save_tiny_guard(tmp_path_factory.mktemp("guard") / "tiny-llama-guard", TinyGuardSpec())


@pytest.fixture(scope="session")
def start_server(tiny_guard_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """`start_server(*extra_args, env=None, credentials=None, port=None)` -> a SERVING ScorerProcess;
    every server started this way is stopped at the end of the session (or by the test)."""
    started: list[ScorerProcess] = []
    logs = tmp_path_factory.mktemp("server-logs")

    def start(
        *extra: str,
        env: dict[str, str] | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        port: int | None = None,
    ) -> ScorerProcess:
        args = ["--guard", str(tiny_guard_dir), "--preset", "llama-guard-3", *extra]
        log = logs / f"server-{len(started)}.log"
        server = ScorerProcess(args, log, port or free_port(), free_port(), env=env or {})
        started.append(server)
        return server.start(credentials=credentials)

    yield start
    for s in started:
        s.stop(10)


@pytest.fixture(scope="session")
def toy_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Path]:
    """One default `star-demo` run (finetuning, evaluation, landscapes), shared by the slow toy-world
    tests: (exit code, report directory)."""
    from trainer_client.toy.demo import main

    out = tmp_path_factory.mktemp("toy-demo") / "report"
    return main(["--out", str(out)]), out


@pytest.fixture(scope="session")
def guard_templates() -> Path:
    """The real guard templates folder (../shared/guard-templates or STAR_GUARD_TEMPLATES): a test that
    needs it is skipped without it, and fails without it in CI (CI=true)."""
    return require_guard_templates(__file__)
