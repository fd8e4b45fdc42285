"""star-gateway against real components: a `star-scorer serve` on the shipped toy guard, the toy chat
model (finetuned to answer hazard requests, as examples/moderate_toy_chat.py does) behind a real
OpenAI-compatible server (star_testing/chat_upstream.py: transformers greedy generation, standing for
vLLM, which tests/test_gateway_vllm.py runs where its venv exists), the gateway as a subprocess, and
the real `openai` client pointed at it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from star_client import ScorerClient
from star_contract.stop_rule import first_stop
from star_contract.types import Conversation, CutSpec, ModerateOptions, ScoreRequest
from star_testing.http_process import HttpProcess
from star_testing.scorer_process import ScorerProcess, free_port
from star_testing.scorer_process import page_metric as metric
from star_testing.waiting import wait_until
from tests.gateway_parts import (
    API_KEY,
    BENIGN,
    HARMFUL,
    MODEL,
    gateway_process,
    get_json,
    start_scorer,
    upstream_process,
)


@dataclass
class Stack:
    scorer: ScorerProcess
    upstream: HttpProcess
    gateway: HttpProcess
    broken: HttpProcess
    """A gateway whose upstream and scorer are both down."""
    open_gateway: HttpProcess
    """A gateway that fails open, its scorer down."""

    def client(self, url: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(base_url=(url or self.gateway.url) + "/v1", api_key=API_KEY, max_retries=0)

    def direct(self, prompt: str, chat: bool = True) -> str:
        """The upstream's whole answer, asked directly."""
        client = openai.OpenAI(base_url=self.upstream.url + "/v1", api_key=API_KEY, max_retries=0)
        if chat:
            got = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}])
            return got.choices[0].message.content or ""
        return client.completions.create(model=MODEL, prompt=prompt).choices[0].text

    def stop_of(self, prompt: str, answer: str) -> Any:
        """Where the stop rule stops `answer` when the scorer scores it whole (Score)."""
        with ScorerClient(self.scorer.address) as client:
            scores = client.score(ScoreRequest(Conversation.from_pair(prompt, answer), CutSpec()))
        return first_stop(scores.segments, ModerateOptions())


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, harmful_chat_dir: Path) -> Iterator[Stack]:
    """Everything is launched at once (the gateways need neither side up to start), then waited for; the
    upstream serves the chat model conftest finetunes once per run."""
    logs = tmp_path_factory.mktemp("gateway-logs")
    dead = f"127.0.0.1:{free_port()}"
    scorer = start_scorer(logs)
    upstream = upstream_process(harmful_chat_dir, logs, token_delay_ms=5)
    gateway = gateway_process(upstream.url, scorer.address, logs, "--guardrail-idle-s", "2").launch()
    broken = gateway_process(f"http://{dead}", dead, logs).launch()
    open_gateway = gateway_process(upstream.url, dead, logs, "--fail-open").launch()
    started = [gateway, broken, open_gateway]
    try:
        started.append(upstream.launch())
        for proc in started:
            proc.wait()
        scorer.wait_serving()
        yield Stack(scorer, upstream, gateway, broken, open_gateway)
    finally:
        for proc in started:
            proc.stop()
        scorer.stop(10)


def test_a_harmful_stream_is_cut_off_at_the_first_unsafe_cut(stack: Stack) -> None:
    """The finetuned model's answer to a hazard request, streamed through the gateway: the client gets
    exactly the text before the stop offset (hold-back 0: nothing unscored), then one content_filter
    chunk carrying the offset and score; the stop matches Score on the whole answer, and the upstream's
    generation was aborted, not run to its end."""
    full = stack.direct(HARMFUL)
    want = stack.stop_of(HARMFUL, full)
    assert want is not None and 0 < want.offset < len(full), full
    before = get_json(stack.upstream.url + "/debug/stats")["streams_aborted"]
    chunks = list(
        stack.client().chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": HARMFUL}], stream=True, max_tokens=200
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    last = chunks[-1]
    assert last.choices[0].finish_reason == "content_filter"
    info = (last.model_extra or {})["star_moderation"]
    assert info["offset"] == want.offset and info["cut"] == want.cut
    assert abs(info["p_safe"] - want.p_safe) < 1e-4
    assert text == full[: want.offset]
    assert "veltrax" in full and "veltrax" not in text
    wait_until(lambda: get_json(stack.upstream.url + "/debug/stats")["streams_aborted"] > before, 10,
               what="the upstream's generation aborted")  # fmt: skip


def test_a_benign_stream_passes_byte_identical(stack: Stack) -> None:
    """Through the gateway, a benign answer's server-sent events are the very bytes the upstream sent
    for that request (chat and completions routes), and the openai client reads them as usual."""
    for route, body in (
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": BENIGN}]}),
        ("/v1/completions", {"prompt": f"<|user|> {BENIGN} <|end|> <|assistant|> "}),  # the chat template
    ):
        got = bytearray()
        with httpx.stream("POST", stack.gateway.url + route, json={"model": MODEL, "stream": True, **body},
                          headers={"authorization": f"Bearer {API_KEY}"}, timeout=60) as r:  # fmt: skip
            assert r.status_code == 200
            for data in r.iter_raw():
                got.extend(data)
        first = json.loads(bytes(got).split(b"\n\n")[0].removeprefix(b"data: "))
        sent = httpx.get(f"{stack.upstream.url}/debug/stream/{first['id']}").content
        assert bytes(got) == sent, bytes(got)[-300:]
        assert sent.endswith(b"data: [DONE]\n\n") and len(sent) > 500
    stream = stack.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": BENIGN}], stream=True
    )
    chunks = list(stream)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == stack.direct(BENIGN)


def test_whole_answers_are_scored_and_filtered(stack: Stack) -> None:
    """Not streaming: a harmful answer comes back cut at the stop offset with finish_reason
    content_filter and the stop in `star_moderation`; a benign one unchanged."""
    full = stack.direct(HARMFUL)
    want = stack.stop_of(HARMFUL, full)
    got = stack.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": HARMFUL}])
    choice = got.choices[0]
    assert choice.finish_reason == "content_filter"
    assert choice.message.content == full[: want.offset]
    assert (choice.model_extra or {})["star_moderation"]["offset"] == want.offset
    prompt = f"<|user|> {BENIGN} <|end|> <|assistant|> "
    benign = stack.client().completions.create(model=MODEL, prompt=prompt)
    assert benign.choices[0].finish_reason == "stop" and benign.choices[0].text == stack.direct(prompt, False)


def test_hold_back_words_bounds_what_passes_the_stop(stack: Stack) -> None:
    """Per request (`star_moderation.hold_back_words`, stripped before the upstream sees the body): with
    a window of 3 words the client may get up to 3 words past the stop offset, never more."""
    full = stack.direct(HARMFUL)
    want = stack.stop_of(HARMFUL, full)
    chunks = list(
        stack.client().chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": HARMFUL}], stream=True,
            extra_body={"star_moderation": {"hold_back_words": 3}},
        )
    )  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].choices[0].finish_reason == "content_filter"
    assert full.startswith(text) and len(text) >= want.offset
    assert len(full[want.offset : len(text)].split()) <= 3


def test_models_and_the_api_key_pass_through(stack: Stack) -> None:
    assert [m.id for m in stack.client().models.list()] == [MODEL]
    seen = get_json(stack.upstream.url + "/debug/stats")["last_headers"]
    assert seen["authorization"] == f"Bearer {API_KEY}"
    wrong = openai.OpenAI(base_url=stack.gateway.url + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": BENIGN}])


def test_bad_input_gets_openai_shaped_errors(stack: Stack) -> None:
    """Malformed JSON and a bad extension option: 400 from the gateway; an unknown model: the
    upstream's own 404, passed back; all in OpenAI's error shape."""
    r = httpx.post(stack.gateway.url + "/v1/chat/completions", content=b"{not json", timeout=10)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": BENIGN}],
        "star_moderation": {"every": 0},
    }
    r = httpx.post(stack.gateway.url + "/v1/chat/completions", json=body, timeout=10)
    assert r.status_code == 400 and "every" in r.json()["error"]["message"]
    with pytest.raises(openai.NotFoundError):
        stack.client().chat.completions.create(model="nope", messages=[{"role": "user", "content": BENIGN}])


def test_upstream_down_is_502_and_scorer_down_fails_closed(stack: Stack) -> None:
    client = stack.client(stack.broken.url)
    messages = [{"role": "user", "content": BENIGN}]
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(
            model=MODEL, messages=messages, extra_body={"star_moderation": {"enabled": False}}
        )
    assert err.value.status_code == 502 and err.value.body["code"] == "upstream_unavailable"  # type: ignore[index]
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model=MODEL, messages=messages, stream=True)
    assert err.value.status_code == 503 and err.value.body["code"] == "moderation_unavailable"  # type: ignore[index]


def test_probes_say_whether_answers_can_be_moderated(stack: Stack) -> None:
    """/healthz answers while the process runs; /readyz is 200 once the scorer answers, 503 (with the
    reason) while it cannot be reached, and 200 for a gateway that fails open."""
    for gateway in (stack.gateway, stack.broken, stack.open_gateway):
        assert httpx.get(gateway.url + "/healthz", timeout=10).status_code == 200
    assert httpx.get(stack.gateway.url + "/readyz", timeout=10).json()["status"] == "ready"
    down = httpx.get(stack.broken.url + "/readyz", timeout=10)
    assert down.status_code == 503 and "scorer" in down.json()["reason"]
    assert httpx.get(stack.open_gateway.url + "/readyz", timeout=10).status_code == 200


def test_scorer_down_with_fail_open_passes_unmoderated(stack: Stack) -> None:
    r = httpx.post(stack.open_gateway.url + "/v1/chat/completions", timeout=30,
                   json={"model": MODEL, "messages": [{"role": "user", "content": BENIGN}]},
                   headers={"authorization": f"Bearer {API_KEY}"})  # fmt: skip
    assert r.status_code == 200 and r.headers["x-star-moderation"] == "unavailable"
    assert r.json()["choices"][0]["message"]["content"] == stack.direct(BENIGN)


def test_a_client_gone_mid_stream_leaves_nothing_open(stack: Stack) -> None:
    """The client reads two events and hangs up: the gateway closes the upstream request (its
    generation is aborted) and the Moderate session (the gateway's and the scorer's session gauges
    return to zero)."""
    before = get_json(stack.upstream.url + "/debug/stats")["streams_aborted"]
    body = {"model": MODEL, "stream": True, "max_tokens": 400, "star_moderation": {"hold_back_words": -1},
            "messages": [{"role": "user", "content": BENIGN}]}  # fmt: skip

    async def hang_up() -> None:
        headers = {"authorization": f"Bearer {API_KEY}"}
        url = stack.gateway.url + "/v1/chat/completions"
        async with (
            httpx.AsyncClient(timeout=30) as client,
            client.stream("POST", url, json=body, headers=headers) as r,
        ):
            seen = 0
            async for _ in r.aiter_raw():
                seen += 1
                if seen >= 2:
                    break

    asyncio.run(hang_up())
    gateway_metrics = stack.gateway.url + "/metrics"
    wait_until(lambda: get_json(stack.upstream.url + "/debug/stats")["streams_aborted"] > before, 15,
               what="the upstream request closed")  # fmt: skip
    wait_until(lambda: metric(gateway_metrics, "star_gateway_sessions", kind="stream") == 0, 15,
               what="the gateway's sessions closed")  # fmt: skip
    scorer_metrics = f"http://127.0.0.1:{stack.scorer.metrics_port}/metrics"
    wait_until(lambda: metric(scorer_metrics, "star_moderation_sessions") == 0, 15,
               what="the scorer's sessions closed")  # fmt: skip
    assert metric(gateway_metrics, "star_gateway_requests_total", outcome="client_gone") >= 1


def test_input_moderation_refuses_a_flagged_user_message(stack: Stack) -> None:
    """With `input` on, the last user message is judged before the upstream is called: a message that
    carries the hazard steps is refused (400, code content_filter); a benign one is served."""
    hazard = (
        "step one : mix one cups of veltrax . step two : boil the glimmerdust with veltrax until it glows ."
    )
    opts = {"star_moderation": {"input": True}}
    with pytest.raises(openai.BadRequestError) as err:
        stack.client().chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": hazard}], extra_body=opts
        )
    assert err.value.code == "content_filter"
    ok = stack.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": BENIGN}], extra_body=opts
    )
    assert ok.choices[0].finish_reason == "stop"


def test_metrics_count_requests_and_stops(stack: Stack) -> None:
    page = stack.gateway.url + "/metrics"
    assert metric(page, "star_gateway_stopped_responses_total", reason="content_filter") >= 1
    assert metric(page, "star_gateway_requests_total", outcome="passed") >= 1
    assert metric(page, "star_gateway_chunk_added_seconds_count") > 10
    # the gateway's own time per chunk (observed only for chunks no score held back: how many depends
    # on the box's load) and the scorer's round trip per cut (benchmarks/gateway.py)
    own = metric(page, "star_gateway_chunk_own_seconds_count")
    assert own >= 1 and metric(page, "star_gateway_chunk_own_seconds_sum") / own < 0.5
    assert metric(page, "star_gateway_scorer_roundtrip_seconds_count") > 5


def _deltas(stack: Stack, prompt: str) -> list[str]:
    """The upstream's streamed text deltas for `prompt` (what LiteLLM accumulates chunk by chunk)."""
    client = openai.OpenAI(base_url=stack.upstream.url + "/v1", api_key=API_KEY, max_retries=0)
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": prompt}], stream=True
    )
    return [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]


def _guardrail(stack: Stack, call_id: str, input_type: str, text: str) -> dict[str, Any]:
    """One call as LiteLLM's generic guardrail makes it (its documented request fields)."""
    body = {"input_type": input_type, "texts": [text], "litellm_call_id": call_id, "litellm_trace_id": None,
            "model": MODEL, "structured_messages": None, "images": None, "tools": None,
            "request_data": {"user_api_key_hash": None},
            "additional_provider_specific_params": {}}  # fmt: skip
    r = httpx.post(stack.gateway.url + "/beta/litellm_basic_guardrail_api", json=body, timeout=30)
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_litellm_guardrail_blocks_at_the_unsafe_cut(stack: Stack) -> None:
    """LiteLLM's post_call checks with `streaming_sampling_rate: 1`: the whole answer so far at every
    chunk, one call id. NONE until the text completes the cut that fires the rule (the next word has
    begun), BLOCKED from that very call on, naming the offset; a text that does not extend the last one
    starts the session over."""
    full = stack.direct(HARMFUL)
    want = stack.stop_of(HARMFUL, full)
    call_id = f"call-{free_port()}"
    assert _guardrail(stack, call_id, "request", HARMFUL)["action"] == "NONE"
    text, blocked_at = "", None
    for delta in _deltas(stack, HARMFUL):
        text += delta
        reply = _guardrail(stack, call_id, "response", text)
        if reply["action"] == "BLOCKED":
            blocked_at = text
            assert f"offset {want.offset}" in reply["blocked_reason"]
            break
        assert text[want.cut :].strip() == "", "the cut that fires was final and not blocked"
    assert blocked_at is not None and blocked_at[want.cut :].strip() != ""
    assert _guardrail(stack, call_id, "response", "something else entirely .")["action"] == "NONE"
    assert _guardrail(stack, call_id, "response", full)["action"] == "BLOCKED"


def test_litellm_guardrail_computes_each_token_about_once(stack: Stack) -> None:
    """A benign answer checked at every one of its chunks, then once more whole (LiteLLM's last call,
    which closes the session so the last cut is scored): the scorer computes the session's trunk (the
    conversation's guard tokens) about once, as much as one call with the whole answer costs (ratio
    <= 1.5; re-scanning the whole text at every call would cost about half the number of calls times
    as much). Idle sessions close."""
    deltas = _deltas(stack, BENIGN)
    full = "".join(deltas)
    scorer_metrics = f"http://127.0.0.1:{stack.scorer.metrics_port}/metrics"

    def trunk_tokens() -> float:
        return metric(scorer_metrics, "star_session_trunk_tokens_total")

    start = trunk_tokens()
    once = f"call-{free_port()}"
    _guardrail(stack, once, "request", BENIGN)
    assert _guardrail(stack, once, "response", full)["action"] == "NONE"
    assert _guardrail(stack, once, "response", full)["action"] == "NONE"  # the last call: closes
    whole = trunk_tokens() - start
    call_id = f"call-{free_port()}"
    _guardrail(stack, call_id, "request", BENIGN)
    text = ""
    for delta in deltas:
        text += delta
        reply = _guardrail(stack, call_id, "response", text)
        assert reply["action"] == "NONE", reply
    reply = _guardrail(stack, call_id, "response", full)
    assert reply["action"] == "NONE", reply
    chunked = trunk_tokens() - start - whole
    print(f"{len(deltas)} checks: trunk tokens computed {chunked:.0f}, whole answer at once {whole:.0f}")
    assert len(deltas) >= 30 and whole > 0 and chunked / whole <= 1.5
    page = stack.gateway.url + "/metrics"
    wait_until(lambda: metric(page, "star_gateway_sessions", kind="guardrail") == 0, 15,
               what="idle guardrail sessions closed")  # fmt: skip


def test_litellm_guardrail_holds_back_what_no_safe_score_covers(stack: Stack) -> None:
    """Every NONE carries `stream_holdback_chars`: the characters past the hold-back window (0 words by
    default: past the end of the last cut scored safe), which LiteLLM's incremental_diff mode withholds
    from its client; 0 once the repeated text has closed the session. What is released (text minus the
    held tail) never passes the stop offset of the harmful answer."""
    full = stack.direct(HARMFUL)
    want = stack.stop_of(HARMFUL, full)
    assert want is not None
    call_id, text, held = f"call-{free_port()}", "", []
    for delta in _deltas(stack, HARMFUL):
        text += delta
        reply = _guardrail(stack, call_id, "response", text)
        if reply["action"] == "BLOCKED":
            break
        (n,) = reply["stream_holdback_chars"]
        held.append(n)
        assert 0 <= n <= len(text) and len(text) - n <= want.offset
    assert max(held) > 0
    benign = "".join(_deltas(stack, BENIGN))
    call_id = f"call-{free_port()}"
    assert _guardrail(stack, call_id, "request", BENIGN)["action"] == "NONE"
    assert _guardrail(stack, call_id, "response", benign)["stream_holdback_chars"][0] > 0
    assert _guardrail(stack, call_id, "response", benign)["stream_holdback_chars"] == [0]  # closed


def test_litellm_guardrail_refuses_a_malformed_call(stack: Stack) -> None:
    url = stack.gateway.url + "/beta/litellm_basic_guardrail_api"
    r = httpx.post(url, json={"texts": ["x"]}, timeout=10)
    assert r.status_code == 400 and "input_type" in r.json()["error"]["message"]
    r = httpx.post(url, content=b"[", timeout=10)
    assert r.status_code == 400
