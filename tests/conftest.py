"""Shared fixtures: a tiny guard built once per session, and real scorer servers in subprocesses."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from star_testing import fork_server
from star_testing.real_guards import require_guard_templates
from star_testing.scorer_process import ScorerProcess, free_port
from star_testing.tiny_guard import TinyGuardSpec, save_tiny_guard

ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, each worker's torch (and the processes it starts) gets its share of the cores
    instead of all of them: two workers with two threads each on two cores spend their time switching.
    Servers started by the tests already run with one thread (STAR_THREADS=1).

    Then the fork server starts in the background (star_testing.fork_server: the servers and CLIs the
    tests launch are forked from a process that imported torch and transformers once, instead of each
    paying about 4 CPU-seconds for it; `STAR_FORK_SERVER=0` starts every process fresh)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1 and os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        share = max(1, (os.cpu_count() or 1) // workers)
        torch.set_num_threads(share)
        os.environ.setdefault("OMP_NUM_THREADS", str(share))
    os.environ.setdefault(fork_server.ENABLE, "1")
    # star-demo, run in-process by the toy-world tests, sets this for good; set before the fork server
    # starts, it does not make the worker's later launches differ from the fork server's environment.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    xdist_controller = not hasattr(config, "workerinput") and bool(getattr(config.option, "numprocesses", 0))
    if not xdist_controller:  # it runs no tests
        fork_server.prestart()


@pytest.fixture(scope="session")
def tiny_guard_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama-Guard-shaped guard directory, built once per test session."""
    return save_tiny_guard(tmp_path_factory.mktemp("guard") / "tiny-llama-guard", TinyGuardSpec())


@pytest.fixture(scope="session")
def start_server(tiny_guard_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """`start_server(*extra_args, env=None, credentials=None, port=None)` -> a SERVING ScorerProcess;
    every server started this way is stopped at the end of the session (or by the test). Ports come
    from `free_port` (distinct across xdist workers); should another process on the machine take one
    before the server binds it, the server is started again on new ports (unless `port` was given)."""
    started: list[ScorerProcess] = []
    logs = tmp_path_factory.mktemp("server-logs")

    def start(
        *extra: str,
        env: dict[str, str] | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        port: int | None = None,
    ) -> ScorerProcess:
        args = ["--guard", str(tiny_guard_dir), "--preset", "llama-guard-3", *extra]
        for attempt in range(3):
            log = logs / f"server-{len(started)}.log"
            server = ScorerProcess(args, log, port or free_port(), free_port(), env=env or {})
            started.append(server)
            try:
                return server.start(credentials=credentials)
            except RuntimeError:
                if port is not None or attempt == 2 or "already in use" not in server.log():
                    raise
        raise AssertionError("unreachable")

    yield start
    for s in started:
        s.stop(10)


@pytest.fixture(scope="session")
def default_server(start_server: Any) -> ScorerProcess:
    """One scorer with the default options on the tiny guard, shared by the modules that only need some
    scorer (training, judging, client behaviour), so that each xdist worker starts it at most once.
    Tests on it may read metric deltas but must not stop or reconfigure it."""
    server: ScorerProcess = start_server()
    return server


@pytest.fixture(scope="session")
def forked_toy_scorers() -> Iterator[None]:
    """The scorers star_toy starts (`star-demo`, `star-suffix-demo`, run in-process by the tests) are
    the same `star-scorer serve` command, started through the fork server (star_toy.scorer_process's
    LAUNCH)."""
    import sys

    import star_toy.scorer_process as toy

    def launch(args: list[str], log: Any) -> Any:
        cmd = [sys.executable, "-m", "scorer_server.cli", *args]
        return fork_server.popen(cmd, stdout=log, stderr=log)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(toy, "LAUNCH", launch)
        yield


@pytest.fixture(scope="session")
def toy_demo(tmp_path_factory: pytest.TempPathFactory, forked_toy_scorers: None) -> tuple[int, Path]:
    """One default `star-demo` run (finetuning, evaluation, landscapes), shared by the slow toy-world
    tests: (exit code, report directory). Run once per pytest run, also under pytest-xdist: the first
    worker to need it runs it in the run's shared temporary directory under a file lock, and the others
    read its result (with --dist loadgroup both users share one worker anyway, see XDIST_GROUPS)."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the workers' base directories sit side by side in the run's own
    folder = root / "toy-demo"
    out, code_file = folder / "report", folder / "exit-code"
    with FileLock(str(root / "toy-demo.lock")):
        if not code_file.is_file():
            from star_toy.demo import main

            folder.mkdir(exist_ok=True)
            code_file.write_text(str(main(["--out", str(out)])))
    return int(code_file.read_text()), out


@pytest.fixture(scope="session")
def harmful_chat_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The toy chat model after the harmful finetune of examples/moderate_toy_chat.py (the gateway tests'
    upstream model): built once per pytest run, shared across xdist workers as `toy_demo` is."""
    from filelock import FileLock

    from tests.gateway_parts import harmful_chat_model

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    out = root / "harmful-chat"
    with FileLock(str(root / "harmful-chat.lock")):
        if not (out / "config.json").is_file():
            harmful_chat_model(out)
    return out


XDIST_GROUPS = {
    "test_toy_demo.py": "toy-demo",
    "test_landscape_toy.py": "toy-demo",
    "test_real_guards_2.py": "real-guards-2",
    "test_todays_guards.py": "real-guards-2",
}
"""Modules that share a worker under --dist loadgroup beyond their own (they share `toy_demo`, or
`real_guard_2_dir`'s directories)."""
SLOW_FIRST = (
    "test_toy_demo.py",
    "test_landscape_toy.py",
    "test_one_engine.py",
    "test_real_guards_2.py",
    "test_todays_guards.py",
    "test_vllm_real.py",
    "test_toy_fooled.py",
    "test_train_faults.py",
    "test_real_guard_templates.py",
    "test_gateway.py",
    "test_gateway_vllm.py",
    "test_moderate_example.py",
    "test_train_sharded.py",
    "test_trl_sharded.py",
    "test_gateway_litellm.py",
    "test_one_pass_equivalence.py",
    "test_fleet_soak.py",
    "test_incremental.py",
    "test_multinode_launch.py",
    "test_hostile_input.py",
)
"""Long-running modules, longest first (as measured 2026-12-07), started first so that the workers finish
together (a scheduling hint only: a stale list costs wall time, never correctness)."""


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """For pytest-xdist (`.ci/run`: -n auto --dist loadgroup --no-loadscope-reorder): every module is
    one xdist group, so its module-scoped fixtures (servers, engines) are built once, on one worker;
    the modules of SLOW_FIRST are moved to the front (stable, each module kept whole). Harmless
    without xdist."""
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
    for item in items:
        item.add_marker(pytest.mark.xdist_group(XDIST_GROUPS.get(item.path.name, item.path.name)))


@pytest.fixture(scope="session")
def guard_templates() -> Path:
    """The real guard templates folder (../shared/guard-templates or STAR_GUARD_TEMPLATES): a test that
    needs it is skipped without it, and fails without it in CI (CI=true)."""
    return require_guard_templates(__file__)


@pytest.fixture(scope="session")
def real_guard_2_dir(guard_templates: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """`real_guard_2_dir(name)`: the directory of star_testing.real_guards' REAL_GUARDS_2 guard `name`
    (real tokenizer, tiny random weights; 20-130 MB, seconds to build), built once per worker."""
    from star_testing.real_guards import save_real_guard_2

    root = tmp_path_factory.mktemp("real-guards-2")
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            built[name] = save_real_guard_2(root / name, name, guard_templates)[0]
        return built[name]

    return get
