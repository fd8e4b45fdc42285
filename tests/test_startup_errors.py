"""Every start-up failure of `star-scorer serve` tried as a user would meet it: a real process, exit
code 2, one `star-scorer serve: error: ...` line that says what to change, no traceback and no gRPC or
asyncio shutdown noise. One test per row of the table in docs/guards.md (the ids match)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from star_testing import fork_server
from star_testing.scorer_process import free_port
from star_testing.tiny_guard import TinyGuardSpec, save_tiny_guard

ROOT = Path(__file__).resolve().parent.parent


NOISE = ("Traceback", "Exception ignored", "never awaited", "Event loop is closed", "add_port.cc")


def serve(*args: str, timeout: float = 120.0) -> tuple[int, list[str]]:
    """Run `star-scorer serve` to its end; (exit code, stderr lines)."""
    cmd = [sys.executable, "-m", "scorer_server.cli", "serve", "--host", "127.0.0.1", *args]
    if "--port" not in args:
        cmd += ["--port", str(free_port())]
    if "--metrics-port" not in args:
        cmd += ["--metrics-port", "0"]
    done = fork_server.run(cmd, cwd=ROOT, timeout=timeout)
    return done.returncode, [line for line in done.stderr.splitlines() if line.strip()]


def assert_one_clean_error(code: int, lines: list[str], *fragments: str) -> str:
    assert code == 2, lines
    assert lines and lines[-1].startswith("star-scorer serve: error: "), lines
    for line in lines[:-1]:  # anything before the error is a JSON log line
        json.loads(line)
    text = "\n".join(lines)
    assert not [n for n in NOISE if n in text], text
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]
    return lines[-1]


@pytest.fixture(scope="module")
def guard_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_guard(tmp_path_factory.mktemp("g") / "guard", TinyGuardSpec())


@pytest.fixture()
def broken(guard_dir: Path, tmp_path: Path) -> Callable[[Callable[[Path], None]], Path]:
    """A copy of the tiny guard, damaged by the given function."""

    def make(damage: Callable[[Path], None]) -> Path:
        copy = tmp_path / "copy"
        shutil.copytree(guard_dir, copy)
        damage(copy)
        return copy

    return make


def _template(tmp_path: Path, text: str) -> str:
    path = tmp_path / "t.jinja"
    path.write_text(text)
    return str(path)


TEMPLATE_CASES = {
    "missing-variable": (
        "{{ 'Policy: ' + policy }} 'safe' or 'unsafe'? {{ messages[-1]['content'] }}",
        ["needs the variable 'policy'", "--template-kwargs"],
    ),
    "no-assistant-turn": (
        "{% for m in messages if m['role'] == 'user' %}{{ m['content'] }}{% endfor %} 'safe' or 'unsafe'?",
        ["must render the last assistant message exactly once", "--template-file"],
    ),
    "template-syntax": ("{% for m in messages %}{{ m['content'] }} 'safe'", ["not valid Jinja"]),
    "template-raises": (
        "{{ raise_exception('only Klingon conversations') }}",
        ["refused the conversation: only Klingon conversations"],
    ),
}


@pytest.mark.parametrize("case", list(TEMPLATE_CASES))
def test_template_failures(case: str, guard_dir: Path, tmp_path: Path) -> None:
    text, fragments = TEMPLATE_CASES[case]
    code, lines = serve("--guard", str(guard_dir), "--template-file", _template(tmp_path, text))
    assert_one_clean_error(code, lines, *fragments)


def test_guard_directory_missing(tmp_path: Path) -> None:
    code, lines = serve("--guard", str(tmp_path / "nope"))
    assert_one_clean_error(code, lines, "does not exist", "--guard")


def test_directory_without_config(tmp_path: Path) -> None:
    code, lines = serve("--guard", str(tmp_path))
    assert_one_clean_error(code, lines, "no config.json")


def test_unreadable_weights(broken: Callable[[Callable[[Path], None]], Path]) -> None:
    path = broken(lambda d: (d / "model.safetensors").write_bytes(b"\x00garbage, not safetensors" * 8))
    code, lines = serve("--guard", str(path))
    assert_one_clean_error(code, lines, "cannot load the guard weights", str(path))


def test_corrupt_tokenizer(broken: Callable[[Callable[[Path], None]], Path]) -> None:
    path = broken(lambda d: (d / "tokenizer.json").write_text("{ not json"))
    code, lines = serve("--guard", str(path))
    assert_one_clean_error(code, lines, "cannot load the guard tokenizer")


def _drop_template(d: Path) -> None:
    for f in d.glob("chat_template.*"):
        f.unlink()
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))


def test_tokenizer_without_chat_template(broken: Callable[[Callable[[Path], None]], Path]) -> None:
    code, lines = serve("--guard", str(broken(_drop_template)))
    assert_one_clean_error(code, lines, "no chat template", "--template-file")


def test_wrong_preset_for_the_guard(guard_dir: Path) -> None:
    code, lines = serve("--guard", str(guard_dir), "--preset", "granite-guardian-3")
    assert_one_clean_error(
        code, lines, "never mentions the verdict word(s) 'No', 'Yes'", "--preset llama-guard-3"
    )


def test_verdict_words_with_one_first_token(guard_dir: Path) -> None:
    args = ("--preset", "custom", "--safe-word", "safe", "--unsafe-word", "safe")
    code, lines = serve("--guard", str(guard_dir), *args)
    assert_one_clean_error(code, lines, "start with the same token", "--unsafe-word")


def test_unknown_preset(guard_dir: Path) -> None:
    code, lines = serve("--guard", str(guard_dir), "--preset", "llama-guard-9")
    assert_one_clean_error(code, lines, "unknown guard preset 'llama-guard-9'", "llama-guard-3")


def test_template_kwargs_not_json(guard_dir: Path) -> None:
    code, lines = serve("--guard", str(guard_dir), "--template-kwargs", "{guideline: x}")
    assert_one_clean_error(code, lines, "--template-kwargs is not valid JSON")


def test_template_file_missing(guard_dir: Path, tmp_path: Path) -> None:
    code, lines = serve("--guard", str(guard_dir), "--template-file", str(tmp_path / "none.jinja"))
    assert_one_clean_error(code, lines, "cannot read --template-file")


def test_bad_dtype(guard_dir: Path) -> None:
    code, lines = serve("--guard", str(guard_dir), "--dtype", "int3")
    assert_one_clean_error(code, lines, "--dtype must be one of")


@pytest.fixture()
def taken_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def test_grpc_port_in_use(guard_dir: Path, taken_port: int) -> None:
    code, lines = serve("--guard", str(guard_dir), "--port", str(taken_port))
    assert_one_clean_error(code, lines, f"port {taken_port}", "already in use", "--port")


def test_metrics_port_in_use(guard_dir: Path, taken_port: int) -> None:
    code, lines = serve("--guard", str(guard_dir), "--metrics-port", str(taken_port))
    assert_one_clean_error(code, lines, f"port {taken_port}", "--metrics-port", "0 turns metrics off")


def test_tls_file_missing(guard_dir: Path, tmp_path: Path) -> None:
    missing = str(tmp_path / "server.pem")
    code, lines = serve("--guard", str(guard_dir), "--tls-cert", missing, "--tls-key", missing)
    assert_one_clean_error(code, lines, f"cannot read --tls-cert {missing}")


def test_tls_file_not_pem(guard_dir: Path, tmp_path: Path) -> None:
    junk = tmp_path / "server.pem"
    junk.write_text("hello")
    code, lines = serve("--guard", str(guard_dir), "--tls-cert", str(junk), "--tls-key", str(junk))
    assert_one_clean_error(code, lines, "is not a PEM file")


def test_reading_the_flags_does_not_load_torch() -> None:
    """`star-scorer serve` sets OMP_WAIT_POLICY after reading its flags and before the server module
    imports torch: OpenMP reads it once, when torch loads it, so the flags' modules must not import torch
    (scorer_server.config once did, through the guard loader, and the setting was silently lost). It
    also keeps --help and flag mistakes instant."""
    code = "import sys, scorer_server.cli as c, scorer_server.config; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.stdout.strip() == "False", done.stderr
