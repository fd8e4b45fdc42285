"""A real LiteLLM proxy (1.108.7, the venv scripts/litellm_env.sh builds) with star-gateway as its Generic
Guardrail API, and the real `openai` client streaming through the proxy.

Real here: the LiteLLM proxy process itself, started from its own CLI with a config file; its routing of
the model to our upstream (star_testing/chat_upstream.py, the finetuned toy chat model); its generic
guardrail calling our `POST /beta/litellm_basic_guardrail_api` with the bodies it builds (`pre_call` with
the prompt, then `post_call` at every streamed chunk with the whole answer so far: `streaming_sampling_rate:
1`), holding each chunk until the call answers and ending the stream itself on BLOCKED; and the scorer
(`star-scorer serve` on the shipped toy guard), whose metrics count the guard tokens it computed. Two
proxies: LiteLLM's default streaming mode (block_only: no check after the last chunk, docs/gateway.md)
and `streaming_transform_mode: incremental_diff` (the gateway's `stream_holdback_chars` honoured, one
last check at the end). Nothing is mocked. Skipped, naming the script, where the venv is absent (CI
builds it)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
from transformers import AutoTokenizer

from star_client import ScorerClient
from star_contract.stop_rule import first_stop
from star_contract.types import Conversation, CutSpec, ModerateOptions, ModerationStop, ScoreRequest
from star_testing.http_process import HttpProcess
from star_testing.litellm_proxy import LITELLM, MASTER_KEY, LiteLLMConfig, litellm_process
from star_testing.scorer_process import ScorerProcess, free_port
from star_testing.scorer_process import page_metric as metric
from tests.gateway_parts import (
    API_KEY,
    BENIGN,
    HARMFUL,
    MODEL,
    gateway_process,
    start_scorer,
    toy_guard,
    upstream_process,
)

pytestmark = pytest.mark.skipif(not LITELLM.exists(), reason="no LiteLLM venv: run scripts/litellm_env.sh")


@dataclass
class Stack:
    scorer: ScorerProcess
    upstream: HttpProcess
    gateway: HttpProcess
    litellm: HttpProcess
    """LiteLLM's default streaming mode (block_only)."""
    litellm_diff: HttpProcess
    """The same guardrail with `streaming_transform_mode: incremental_diff`."""

    def cuts_scored(self) -> float:
        return metric(f"http://127.0.0.1:{self.scorer.metrics_port}/metrics", "star_cuts_scored_total")

    def trunk_tokens(self) -> float:
        return metric(
            f"http://127.0.0.1:{self.scorer.metrics_port}/metrics", "star_session_trunk_tokens_total"
        )

    def direct(self, prompt: str) -> str:
        """The upstream's whole answer, asked directly (greedy: the same text as every stream)."""
        client = openai.OpenAI(base_url=self.upstream.url + "/v1", api_key=API_KEY, max_retries=0)
        got = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}])
        return got.choices[0].message.content or ""

    def stop_of(self, prompt: str, answer: str) -> ModerationStop | None:
        with ScorerClient(self.scorer.address) as client:
            scores = client.score(ScoreRequest(Conversation.from_pair(prompt, answer), CutSpec()))
        return first_stop(scores.segments, ModerateOptions())


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, harmful_chat_dir: Path) -> Iterator[Stack]:
    """The proxy (about 15 s to start), the gateway, the scorer and the upstream (the chat model conftest
    finetunes once per run) start together."""
    logs = tmp_path_factory.mktemp("litellm")
    scorer = start_scorer(logs)
    upstream = upstream_process(harmful_chat_dir, logs, token_delay_ms=2)
    gateway = gateway_process(upstream.url, scorer.address, logs, "--guardrail-idle-s", "5").launch()
    config = LiteLLMConfig(MODEL, upstream.url, API_KEY, gateway.url)
    proxy = litellm_process(config, free_port(), logs).launch()
    diff = LiteLLMConfig(MODEL, upstream.url, API_KEY, gateway.url, transform_mode="incremental_diff")
    proxy_diff = litellm_process(diff, free_port(), logs).launch()
    started = [gateway, proxy, proxy_diff]
    try:
        started.append(upstream.launch())
        for proc in started:
            proc.wait(90)
        scorer.wait_serving()
        yield Stack(scorer, upstream, gateway, proxy, proxy_diff)
    finally:
        for proc in started:
            proc.stop()
        scorer.stop(10)


@dataclass
class Streamed:
    deltas: list[str]
    """The content deltas the client received, LiteLLM's block message excluded."""
    finish_reason: str | None
    blocked: str | None
    """LiteLLM's block message (its content_filter chunk) or in-stream error, if any."""


def stream_through_litellm(stack: Stack, prompt: str, proxy: HttpProcess | None = None) -> Streamed:
    url = (proxy or stack.litellm).url
    client = openai.OpenAI(base_url=url + "/v1", api_key=MASTER_KEY, max_retries=0, timeout=60)
    deltas: list[str] = []
    finish, blocked = None, None
    try:
        for chunk in client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": prompt}], stream=True
        ):
            if not chunk.choices:
                continue
            choice = chunk.choices[0]
            content = choice.delta.content or ""
            if content.startswith("STAR moderation"):
                blocked = content
            elif content:
                deltas.append(content)
            finish = choice.finish_reason or finish
    except openai.APIError as exc:  # the proxy's in-stream error frame
        blocked = str(exc)
    return Streamed(deltas, finish, blocked)


def test_litellm_blocks_a_harmful_stream_at_the_unsafe_cut(stack: Stack) -> None:
    """LiteLLM holds each chunk while our endpoint checks the answer so far; the endpoint answers BLOCKED
    on the check whose text completes the cut that fires the stop rule (the next word has begun), so
    the client never receives that chunk, the one after the unsafe cut: what it got ends within the
    firing cut, and it includes the text before the stop offset (Score's stop on the whole answer)."""
    full = stack.direct(HARMFUL)
    want = stack.stop_of(HARMFUL, full)
    assert want is not None and 0 < want.offset < len(full), full
    got = stream_through_litellm(stack, HARMFUL)
    shown = "".join(got.deltas)
    assert got.blocked is not None and f"offset {want.offset}" in got.blocked, got
    assert full.startswith(shown)
    assert len(shown) >= want.offset
    assert full[want.cut : len(shown)].strip() == "", "a chunk past the unsafe cut reached the client"
    assert "veltrax" in full[want.cut :] and "veltrax" not in shown[want.cut :]


def test_litellm_passes_a_benign_stream_computing_each_token_about_once(stack: Stack) -> None:
    """A benign answer streamed through LiteLLM, checked at every chunk with the whole answer so far: the
    client gets the upstream's answer unchanged, and the scorer computed about one trunk token per guard
    token of the final response (ratio <= 1.5; re-scanning the whole text at each of the n checks would
    cost about n/2 per token)."""
    full = stack.direct(BENIGN)
    page = stack.gateway.url + "/metrics"
    checks = metric(page, "star_gateway_guardrail_calls_total", input_type="response")
    before = stack.trunk_tokens()
    got = stream_through_litellm(stack, BENIGN)
    assert got.blocked is None and got.finish_reason == "stop"
    assert "".join(got.deltas) == full
    checks = metric(page, "star_gateway_guardrail_calls_total", input_type="response") - checks
    computed = stack.trunk_tokens() - before
    tokens = len(AutoTokenizer.from_pretrained(toy_guard())(full, add_special_tokens=False)["input_ids"])
    print(f"{checks:.0f} checks, {len(got.deltas)} chunks: {computed:.0f} trunk tokens for {tokens} tokens")
    assert checks >= len(got.deltas) >= 20
    assert computed / tokens <= 1.5


def test_incremental_diff_checks_the_last_cut_and_passes_a_benign_answer_whole(stack: Stack) -> None:
    """With `streaming_transform_mode: incremental_diff` LiteLLM checks once more at the end of the stream
    (the same text again), so the session closes and its last cut is scored: the scorer scores as many
    cuts as Score does on the whole answer (block_only, LiteLLM's default, sends no end-of-stream check
    and leaves the last cut unscored). The tail the endpoint held back is released then: the client gets
    the upstream's answer unchanged."""
    full = stack.direct(BENIGN)
    with ScorerClient(stack.scorer.address) as client:
        cuts = len(client.score(ScoreRequest(Conversation.from_pair(BENIGN, full), CutSpec())).segments)
    before = stack.cuts_scored()
    got = stream_through_litellm(stack, BENIGN, stack.litellm_diff)
    scored = stack.cuts_scored() - before
    assert got.blocked is None and got.finish_reason == "stop", got
    assert "".join(got.deltas) == full
    assert scored == cuts, (scored, cuts)
    before = stack.cuts_scored()
    assert "".join(stream_through_litellm(stack, BENIGN).deltas) == full
    assert stack.cuts_scored() - before == cuts - 1  # block_only: no check after the last chunk


def test_incremental_diff_withholds_what_no_safe_score_covers(stack: Stack) -> None:
    """`stream_holdback_chars` (the gateway's hold-back window, 0 words by default) keeps every unscored
    character from the client: on a harmful answer the client receives nothing past the end of the last
    cut scored safe (the stop's offset), where block_only lets through the firing cut itself."""
    full = stack.direct(HARMFUL)
    want = stack.stop_of(HARMFUL, full)
    assert want is not None and 0 < want.offset < len(full), full
    got = stream_through_litellm(stack, HARMFUL, stack.litellm_diff)
    shown = "".join(got.deltas)
    assert got.blocked is not None, got
    assert full.startswith(shown)
    assert len(shown) <= want.offset, (len(shown), want)
    assert "veltrax" not in shown
