"""The trainer-side tools end on a user's mistake the way `star-scorer serve` does: a real process,
exit code 2, one `PROG: error: ...` line that names what to change, no traceback."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from star_testing import fork_server

ROOT = Path(__file__).resolve().parent.parent


def run(module: str, *args: str) -> tuple[int, list[str]]:
    done = fork_server.run([sys.executable, "-m", module, *args], cwd=ROOT, timeout=120)
    return done.returncode, [line for line in done.stderr.splitlines() if line.strip()]


@pytest.fixture()
def not_a_model(tmp_path: Path) -> str:
    (tmp_path / "empty").mkdir()
    return str(tmp_path / "empty")


@pytest.fixture()
def data(tmp_path: Path) -> str:
    path = tmp_path / "data.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n')
    return str(path)


CASES = {
    "star-train missing key": (
        "trainer_client.train.cli",
        ["--set", "model={m}", "--set", "data={d}"],
        "missing config key(s): output_dir",
    ),
    "star-train model": (
        "trainer_client.train.cli",
        ["--set", "model={m}", "--set", "data={d}", "--set", "output_dir={t}/out", "--set", "method=sft"],
        "model {m} is not a Hugging Face model directory",
    ),
    "star-eval model": (
        "trainer_client.evaluation.cli",
        ["--model", "{m}", "--toy"],
        "--model {m} is not a Hugging",
    ),
    "star-landscape model": (
        "trainer_client.landscape.cli",
        ["{m}", "--prompts", "{d}", "--out", "{t}/o"],
        "model {m} is not a Hugging Face model directory",
    ),
    "star-demo models": ("star_toy.demo", ["--models", "{m}", "--out", "{t}/o"], "star-toy-build"),
    "star-score-dataset config": (
        "trainer_client.scoring.precompute",
        ["--config", "{t}/none.yaml", "--out", "{t}/x"],
        "config file {t}/none.yaml does not exist",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_one_clean_error_line(case: str, not_a_model: str, data: str, tmp_path: Path) -> None:
    module, args, fragment = CASES[case]
    fill = {"m": not_a_model, "d": data, "t": str(tmp_path)}
    code, lines = run(module, *(a.format(**fill) for a in args))
    prog = case.split()[0]
    assert code == 2, lines
    assert lines[-1].startswith(f"{prog}: error: "), lines
    assert fragment.format(**fill) in lines[-1]
    assert not any("Traceback" in line for line in lines), lines
