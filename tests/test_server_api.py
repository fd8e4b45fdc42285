"""The served API against a real server subprocess: equality with the in-process engine, streaming,
load over ScoreStream, validation and fuzzing, health, reflection, metrics and the score CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from star_client import InvalidRequest, ScorerClient
from star_contract import convert
from star_contract.types import Convention, Conversation, CutKind, CutSpec, ScoreRequest
from star_proto import scorer_pb2 as pb
from star_proto import scorer_pb2_grpc as pb_grpc

# Ordinary prose words; tests with explicit character offsets rely on their lengths.
WORDS = ["sure", "here", "is", "how", "to", "do", "it", "step", "by", "step", "first", "take"]
WORDS += ["the", "thing", "then", "carefully", "do", "the", "rest"]


def response(n: int, shift: int = 0) -> str:
    return " ".join(WORDS[(i + shift) % len(WORDS)] for i in range(n))


def requests() -> list[ScoreRequest]:
    out = [
        ScoreRequest(
            Conversation.from_pair("How do I bake bread?", response(n, n)), CutSpec(CutKind.WORDS, 3)
        )
        for n in (1, 4, 9, 17)
    ]
    sys_conv = Conversation.from_dicts(
        [
            {"role": "system", "content": "be nice"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "list sort reverse"},
            {"role": "assistant", "content": response(12)},
        ]
    )
    out.append(ScoreRequest(sys_conv, CutSpec(CutKind.GUARD_TOKENS, 4), temperature=0.7))
    out.append(
        ScoreRequest(Conversation.from_pair("q", response(6)), CutSpec(CutKind.OFFSETS, offsets=(3, 10, 20)))
    )
    out.append(ScoreRequest(Conversation.from_pair("q", ""), CutSpec()))
    published = Conversation.from_pair("q", "Sure,\n\n  " + response(9))
    out.append(ScoreRequest(published, CutSpec(CutKind.WORDS, 2), convention=Convention.PUBLISHED))
    return out


@pytest.fixture(scope="module")
def server(start_server: Any) -> Iterator[Any]:
    srv = start_server("--max-row-tokens", "700", "--max-wait-ms", "5")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def channel(server: Any) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.address) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> pb_grpc.ScorerServiceStub:
    return pb_grpc.ScorerServiceStub(channel)


@pytest.fixture(scope="module")
def engine(tiny_guard_dir: Path) -> Any:
    from scorer_server.budget import TokenBudget
    from scorer_server.engine.engine import EngineConfig, StarEngine

    config = EngineConfig(budget=TokenBudget(max_row_tokens=700))
    return StarEngine.from_dir(tiny_guard_dir, config=config)


def test_served_scores_equal_in_process_engine(server: Any, engine: Any) -> None:
    reqs = requests()
    expected = engine.score(reqs)
    with ScorerClient(server.address) as client:
        served = client.score_many(reqs)
    for e, s in zip(expected, served, strict=True):
        assert [x.end for x in s.segments] == [x.end for x in e.segments]
        assert [x.p_safe for x in s.segments] == pytest.approx([x.p_safe for x in e.segments], abs=1e-5)
        assert s.guard_tokens >= e.guard_tokens > 0


def test_score_streams_parts_and_marks_the_last_complete(
    stub: pb_grpc.ScorerServiceStub, engine: Any
) -> None:
    req = ScoreRequest(Conversation.from_pair("q", response(40)), CutSpec(CutKind.WORDS, 2))
    parts = list(stub.Score(convert.score_request_to_pb(req), timeout=30))
    assert len(parts) > 1, "a long response over max-row-tokens should come back in several parts"
    assert [p.complete for p in parts] == [False] * (len(parts) - 1) + [True]
    assert {p.parts for p in parts} == {len(parts)}
    assert sorted(p.part for p in parts) == list(range(len(parts)))
    scores = convert.scores_from_parts(parts)
    assert [s.end for s in scores.segments] == [s.end for s in engine.score([req])[0].segments]


def test_info_judge_health_reflection(server: Any, channel: grpc.Channel, engine: Any) -> None:
    with ScorerClient(server.address) as client:
        info = client.info()
        verdicts = client.judge([r.conversation for r in requests()[:3]])
    assert info.fingerprint == engine.guard.fingerprint and info.preset == "llama-guard-3"
    assert info.safe_token_id == engine.guard.safe_id and info.max_cuts == 512
    # the served verdicts are the in-process engine's: P(unsafe), the decoded verdict text, categories
    want = engine.judge([r.conversation for r in requests()[:3]])
    assert [v.p_unsafe for v in verdicts] == pytest.approx([w.p_unsafe for w in want], abs=1e-5)
    assert [(v.text, v.categories) for v in verdicts] == [(w.text, w.categories) for w in want]
    assert any(v.text for v in verdicts)
    # p_unsafe_only: the same probabilities, and the guard writes nothing
    with ScorerClient(server.address) as client:
        bare = client.judge([r.conversation for r in requests()[:3]], p_unsafe_only=True)
    assert [v.p_unsafe for v in bare] == pytest.approx([w.p_unsafe for w in want], abs=1e-5)
    assert [(v.text, v.categories) for v in bare] == [("", ())] * 3
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", "star.v1.ScorerService"):
        assert health.Check(health_pb2.HealthCheckRequest(service=name)).status == 1  # SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    answer = next(
        iter(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    )
    names = {s.name for s in answer.list_services_response.service}
    assert {"star.v1.ScorerService", "grpc.health.v1.Health"} <= names


def test_load_16_streams_x_50_requests_each_answered_once(channel: grpc.Channel) -> None:
    n_clients, n_requests = 16, 50
    answers: Counter[str] = Counter()
    errors: list[str] = []
    lock = threading.Lock()
    base = [convert.score_request_to_pb(r) for r in requests()[:2]] * 2  # short: this is about plumbing

    def client(c: int) -> None:
        stub = pb_grpc.ScorerServiceStub(channel)
        msgs = [pb.ScoreStreamRequest(request_id=f"{c}-{i}", request=base[i % 4]) for i in range(n_requests)]
        for resp in stub.ScoreStream(iter(msgs), timeout=120):
            with lock:
                if resp.HasField("error"):
                    errors.append(resp.error.message)
                elif resp.result.complete:
                    answers[resp.request_id] += 1

    threads = [threading.Thread(target=client, args=(c,)) for c in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not errors
    assert set(answers) == {f"{c}-{i}" for c in range(n_clients) for i in range(n_requests)}
    assert set(answers.values()) == {1}


@pytest.mark.parametrize(
    ("messages", "cuts", "needle"),
    [
        ([], {}, "messages is empty"),
        ([(2, "hi")], {}, "last message must be the assistant"),
        ([(2, "a"), (2, "b"), (3, "c")], {}, "alternate"),
        ([(2, "a"), (1, "s"), (3, "c")], {}, "system message may only come first"),
        ([(7, "a"), (3, "c")], {}, "role"),
        ([(2, "a"), (3, "abc")], {"kind": 3, "offsets": [2, 1]}, "strictly increasing"),
        ([(2, "a"), (3, "abc")], {"kind": 3, "offsets": [4]}, "(0, 3]"),
        ([(2, "a"), (3, "abc")], {"kind": 1, "offsets": [1]}, "only allowed"),
        ([(2, "a"), (3, "abc")], {"kind": 9}, "cuts.kind"),
        ([(2, "a"), (3, "a " * 600)], {"kind": 1, "every": 1}, "over the limit of 512"),
    ],
)
def test_bad_requests_get_actionable_invalid_argument(
    stub: pb_grpc.ScorerServiceStub, messages: list[tuple[int, str]], cuts: dict[str, Any], needle: str
) -> None:
    msg = pb.ScoreRequest(
        conversation=pb.Conversation(messages=[pb.Message(role=r, content=c) for r, c in messages]),
        cuts=pb.CutSpec(**cuts),
    )
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Score(msg, timeout=30))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert needle in (err.value.details() or "")


def test_client_raises_invalid_request(server: Any) -> None:
    with ScorerClient(server.address) as client, pytest.raises(InvalidRequest, match="alternate"):
        client.score(ScoreRequest(Conversation.from_dicts([{"role": "assistant", "content": "x"}] * 2)))


messages_st = st.lists(
    st.builds(pb.Message, role=st.integers(0, 6), content=st.text(max_size=40)), max_size=5
)
cuts_st = st.builds(
    pb.CutSpec,
    kind=st.integers(0, 5),
    every=st.integers(0, 2**32 - 1),
    offsets=st.lists(st.integers(0, 2**32 - 1), max_size=6),
)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    messages=messages_st,
    cuts=cuts_st,
    temperature=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
    priority=st.integers(-(2**31), 2**31 - 1),
)
def test_fuzzed_score_requests_end_ok_or_invalid_argument(
    stub: pb_grpc.ScorerServiceStub,
    messages: list[pb.Message],
    cuts: pb.CutSpec,
    temperature: float | None,
    priority: int,
) -> None:
    msg = pb.ScoreRequest(conversation=pb.Conversation(messages=messages), cuts=cuts, priority=priority)
    if temperature is not None:
        msg.temperature = temperature
    try:
        parts = list(stub.Score(msg, timeout=30))
        assert parts and parts[-1].complete
    except grpc.RpcError as err:
        assert err.code() is grpc.StatusCode.INVALID_ARGUMENT, err.details()


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(convs=st.lists(st.builds(pb.Conversation, messages=messages_st), max_size=3))
def test_fuzzed_judge_requests_end_ok_or_invalid_argument(
    stub: pb_grpc.ScorerServiceStub, convs: list[pb.Conversation]
) -> None:
    try:
        resp = stub.Judge(pb.JudgeRequest(conversations=convs), timeout=60)
        assert len(resp.verdicts) == len(convs)
    except grpc.RpcError as err:
        assert err.code() is grpc.StatusCode.INVALID_ARGUMENT, err.details()


def test_metrics_and_server_alive_after_everything(server: Any, channel: grpc.Channel) -> None:
    # One malformed stream request of our own: the fuzzed tests above send one only by chance.
    bad = pb.ScoreStreamRequest(request_id="bad", request=pb.ScoreRequest())
    replies = list(pb_grpc.ScorerServiceStub(channel).ScoreStream(iter([bad]), timeout=30))
    assert [r.error.code for r in replies] == [grpc.StatusCode.INVALID_ARGUMENT.value[0]]
    health = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest(service="")).status == 1
    text = (
        urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    )
    for name in (
        "star_queue_depth",
        "star_requests_total",
        "star_batch_size",
        "star_batch_tokens",
        "star_forward_seconds",
        "star_cuts_scored_total",
        "star_guard_forwards_total",
    ):
        assert name in text
    values = {
        line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line.startswith("star_head")
    }
    assert values["star_head_cache_bytes"] > 0 and values["star_head_cache_tokens"] > 0
    assert values["star_head_tokens_reused_total"] > 0  # every request started from the cached head
    assert 'code="INVALID_ARGUMENT"' in text and 'method="ScoreStreamRequest"' in text
    assert "INTERNAL" not in text


def test_score_cli_writes_jsonl(server: Any, engine: Any, tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    rows = [
        {"id": "a", "prompt": "q", "response": response(7)},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": response(3)}]},
    ]
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "out.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "star_client.cli",
        "score",
        "--server",
        server.address,
        "--in",
        str(src),
        "--out",
        str(out),
        "--cut-words",
        "2",
    ]
    subprocess.run(cmd, check=True, timeout=60, capture_output=True)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["id"] for x in lines] == ["a", 2]
    assert [s[0] for s in lines[0]["segments"]] == [
        len(" ".join(response(7).split()[:k])) for k in (2, 4, 6)
    ] + [len(response(7))]
    published_out = tmp_path / "published.jsonl"
    subprocess.run(
        [
            *cmd[:-4],
            "--in",
            str(src),
            "--out",
            str(published_out),
            "--cut-words",
            "2",
            "--convention",
            "published",
        ],
        check=True,
        timeout=60,
        capture_output=True,
    )
    first = json.loads(published_out.read_text().splitlines()[0])
    want = engine.score(
        [
            ScoreRequest(
                Conversation.from_pair("q", response(7)),
                CutSpec(CutKind.WORDS, 2),
                convention=Convention.PUBLISHED,
            )
        ]
    )[0]
    assert [end for end, _ in first["segments"]] == [s.end for s in want.segments]
    assert [p for _, p in first["segments"]] == pytest.approx([s.p_safe for s in want.segments], abs=1e-5)
    assert first["segments"] != lines[0]["segments"]
    bad = subprocess.run(
        [*cmd[:-4], "--in", str(tmp_path / "missing.jsonl"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "missing.jsonl" in bad.stderr
