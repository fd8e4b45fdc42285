"""examples/moderate_toy_chat.py against a real `star-scorer serve` subprocess on the shipped toy guard:
the harmful reply is stopped before its end, the benign reply passes in full; bad arguments end in one
line and exit code 2."""

from __future__ import annotations

import importlib.util
import io
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from star_toy import datasets
from star_toy.policy import policy_verdict

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "moderate_toy_chat.py"


def load_example() -> ModuleType:
    """The example script as a module (registered in sys.modules, as its dataclass needs)."""
    if (loaded := sys.modules.get("moderate_toy_chat")) is not None:
        return loaded
    spec = importlib.util.spec_from_file_location("moderate_toy_chat", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_harmful_reply_is_stopped_mid_way_and_the_benign_one_passes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ex = load_example()
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the scorer subprocess runs this tree's code
    args = ex.parser().parse_args(["--token-delay-ms", "60", "--verbose"])
    ex.check(args)
    out = io.StringIO()
    harmful, benign = ex.run(args, out)
    printed = out.getvalue()

    assert harmful.label == "harmful" and harmful.prompt == ex.HARMFUL_PROMPT
    verdict = policy_verdict(harmful.prompt, harmful.full)
    assert verdict.unsafe, "the finetuned model's own reply breaks the toy policy"
    assert harmful.stop is not None
    assert 0 < harmful.stop.offset < len(harmful.full)
    assert harmful.stop.offset < verdict.first_unsafe_char <= harmful.stop.cut
    assert harmful.full.startswith(harmful.shown) and len(harmful.shown) < len(harmful.full)
    assert f"STOPPED at offset {harmful.stop.offset} of the {len(harmful.full)}-character reply" in printed

    assert benign.label == "benign" and benign.stop is None
    assert not policy_verdict(benign.prompt, benign.full).unsafe
    assert benign.shown == benign.full and len(benign.full) > 100
    assert benign.segments and benign.segments[-1].end == len(benign.full)
    assert f"PASSED: all {len(benign.full)} characters reached the user" in printed
    assert printed.count("P(safe)") > len(benign.segments)  # --verbose prints every cut


def test_the_default_harmful_prompt_is_held_out_of_the_finetuning_prompts() -> None:
    ex = load_example()
    train, held = datasets.harmful_prompt_split(datasets.WorldConfig().seed)
    assert ex.HARMFUL_PROMPT in {p for p, _ in held}
    assert ex.HARMFUL_PROMPT not in {p for p, _ in train}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--runs", "harmful,other"], "--runs takes a subset"),
        (["--scorer", "nohost"], "--scorer wants HOST:PORT"),
        (["--every", "0"], "--every and --consecutive must be >= 1"),
        (["--unsafe-below", "2"], "--unsafe-below must be in [0, 1]"),
        (["--models", "/nonexistent"], "/nonexistent/chat is not a model directory"),
    ],
)
def test_bad_arguments_end_in_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert load_example().main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("moderate_toy_chat.py: error: ") and message in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_the_script_runs_standalone() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, env=env, timeout=120
    )
    assert res.returncode == 0, res.stderr
    assert "prefill" in res.stdout and "--token-delay-ms" in res.stdout
