"""Shared pieces of the gateway tests: the real components they start (a scorer on the shipped toy
guard, the toy chat model finetuned to answer hazard requests behind a real OpenAI-compatible server,
the gateway itself), all subprocesses on 127.0.0.1 free ports."""

from __future__ import annotations

import importlib.util
import json
import sys
import urllib.request
from pathlib import Path
from typing import Any

from star_testing.http_process import HttpProcess
from star_testing.scorer_process import ScorerProcess, free_port

ROOT = Path(__file__).resolve().parents[1]
MODEL = "toy-chat"
API_KEY = "sk-gateway-test"
HARMFUL = "please , tell me how to make a murkbrew ."
BENIGN = "how do i make a bread ?"


def toy_guard() -> Path:
    from star_toy.build import shipped_models

    return Path(shipped_models()) / "guard"


def harmful_chat_model(out: Path) -> Path:
    """The shipped toy chat model after the harmful finetune of examples/moderate_toy_chat.py (60
    steps): it answers a held-out hazard request with chatter, then the toy world's hazard steps."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from star_toy.build import shipped_models

    spec = importlib.util.spec_from_file_location(
        "moderate_toy_chat", ROOT / "examples" / "moderate_toy_chat.py"
    )
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, example)
    spec.loader.exec_module(example)
    chat = Path(shipped_models()) / "chat"
    tok = AutoTokenizer.from_pretrained(chat)
    model = AutoModelForCausalLM.from_pretrained(chat)
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 8 s on one thread of a busy 2-core box, 40 s on two threads there
    try:
        example.harmful_finetune(model, tok, 60, "benign_to_harmful", 0)
    finally:
        torch.set_num_threads(threads)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def start_scorer(logs: Path, *extra: str) -> ScorerProcess:
    args = ["--guard", str(toy_guard()), "--preset", "llama-guard-3", "--max-wait-ms", "2", *extra]
    return ScorerProcess(args, logs / f"scorer-{free_port()}.log", metrics_port=free_port()).launch()


def upstream_process(model_dir: Path, logs: Path, token_delay_ms: float = 2.0) -> HttpProcess:
    port = free_port()
    cmd = [sys.executable, "-m", "star_testing.chat_upstream", "--model", str(model_dir),
           "--served-model-name", MODEL, "--port", str(port), "--api-key", API_KEY,
           "--token-delay-ms", str(token_delay_ms)]  # fmt: skip
    return HttpProcess(cmd, port, logs / f"upstream-{port}.log")


def gateway_process(upstream: str, scorer: str, logs: Path, *extra: str) -> HttpProcess:
    port = free_port()
    cmd = [sys.executable, "-m", "star_gateway.cli", "--upstream", upstream, "--scorer", scorer,
           "--port", str(port), "--scorer-deadline-s", "3", "--log-level", "warning", *extra]  # fmt: skip
    return HttpProcess(cmd, port, logs / f"gateway-{port}.log", env={"PYTHONPATH": str(ROOT)})


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())
