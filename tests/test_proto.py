"""The API contract: generated code is current, the proto lints clean, conversion round-trips."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from star_contract import convert
from star_contract.errors import InvalidRequest
from star_contract.types import (
    Conversation,
    CutKind,
    CutSpec,
    GuardInfo,
    ModerationStop,
    ScoreRequest,
    Verdict,
)
from star_proto import scorer_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent


def test_generated_code_is_current(tmp_path: Path) -> None:
    out = tmp_path / "star_proto"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--out", str(out)], check=True)
    tracked = ROOT / "star_proto"
    fresh = sorted(p.name for p in out.iterdir())
    assert fresh == sorted(p.name for p in tracked.iterdir() if p.name != "__pycache__")
    for name in fresh:
        assert (out / name).read_text() == (tracked / name).read_text(), (
            f"star_proto/{name} is stale: run `python scripts/gen_proto.py` and commit the result"
        )


@pytest.mark.skipif(shutil.which("buf") is None, reason="buf is not installed")
def test_buf_lint_standard() -> None:
    res = subprocess.run(["buf", "lint"], cwd=ROOT / "proto", capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_score_request_round_trip() -> None:
    conv = Conversation.from_dicts(
        [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "a b"},
        ]
    )
    for cuts in (CutSpec(), CutSpec(CutKind.GUARD_TOKENS, 3), CutSpec(CutKind.OFFSETS, offsets=(1, 3))):
        for temp in (1.0, 0.5):
            req = ScoreRequest(conv, cuts, temp)
            back, prio = convert.score_request_from_pb(convert.score_request_to_pb(req, priority=7))
            assert back == req and prio == 7


def test_decoding_rejects_unknown_enums_and_bad_temperature() -> None:
    bad_role = pb.ScoreRequest(conversation=pb.Conversation(messages=[pb.Message(role=9, content="x")]))
    with pytest.raises(InvalidRequest, match=r"messages\[0\]\.role"):
        convert.score_request_from_pb(bad_role)
    with pytest.raises(InvalidRequest, match=r"cuts\.kind"):
        convert.score_request_from_pb(pb.ScoreRequest(cuts=pb.CutSpec(kind=42)))
    with pytest.raises(InvalidRequest, match="only allowed with CUT_KIND_OFFSETS"):
        convert.score_request_from_pb(pb.ScoreRequest(cuts=pb.CutSpec(offsets=[1])))
    for t in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(InvalidRequest, match="temperature"):
            convert.score_request_from_pb(pb.ScoreRequest(temperature=t))


def test_info_and_verdict_round_trip() -> None:
    info = GuardInfo("g", "llama-guard-3", "safe", "unsafe", 1, 2, "abc", 100, 10, "0.1.0", "local")
    assert convert.info_from_pb(convert.info_to_pb(info, 123)) == info
    v = Verdict(0.75, ("S1", "S2"), "unsafe\nS1,S2")
    assert convert.verdict_from_pb(convert.verdict_to_pb(v)) == v


def test_moderation_stop_round_trip() -> None:
    for stop in (
        ModerationStop(0, 7, 0.0),
        ModerationStop(30, 50, 0.3),
        ModerationStop(2**32 - 1, 2**32 - 1, 1.0),
    ):
        msg = convert.stop_to_pb(stop)
        assert (msg.offset, msg.cut, msg.p_safe) == (stop.offset, stop.cut, stop.p_safe)
        assert convert.stop_from_pb(msg) == stop
        # as it travels: inside a ModerateResponse, through the wire format
        wire = pb.ModerateResponse(stop=msg, complete=True).SerializeToString()
        assert convert.stop_from_pb(pb.ModerateResponse.FromString(wire).stop) == stop


def test_client_imports_no_torch() -> None:
    code = "import sys, star_client\nassert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
