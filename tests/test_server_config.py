"""ServerConfig is one sub-config per component, while flags and STAR_* variables stay flat."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from scorer_server.config import (
    BatchingSettings,
    NetworkSettings,
    RemoteSettings,
    ServerConfig,
    add_server_arguments,
    config_from,
)
from scorer_server.flags import flags_of
from scorer_server.limits import Limits


def _config(argv: list[str], env: dict[str, str] | None = None) -> ServerConfig:
    parser = argparse.ArgumentParser()
    add_server_arguments(parser)
    return config_from(parser.parse_args(["--guard", "/g", *argv]), env or {})


def test_every_flag_lands_in_its_own_section() -> None:
    cfg = _config(
        [
            "--max-batch-tokens", "999", "--max-wait-ms", "2.5", "--no-warmup", "--threads", "3",
            "--max-cuts", "9", "--backend", "vllm", "--remote-url", "http://a:1,http://b:2",
            "--remote-url", "http://c:3", "--remote-max-concurrency", "7", "--port", "6000",
            "--grace-s", "4", "--log-level", "debug", "--no-head-cache",
        ]
    )  # fmt: skip
    assert cfg.batching == BatchingSettings(
        max_batch_tokens=999, max_wait_ms=2.5, warmup=False, threads=3, head_cache=False
    )
    assert cfg.batching.batcher_config().max_wait_s == pytest.approx(0.0025)
    assert cfg.limits == Limits(max_cuts=9)
    assert cfg.remote == RemoteSettings("vllm", ("http://a:1", "http://b:2", "http://c:3"), 7)
    assert cfg.network.port == 6000 and cfg.process.grace_s == 4.0 and cfg.process.log_level == "debug"
    assert cfg.guard.path == "/g"


def test_variables_fill_what_flags_leave_and_flags_win() -> None:
    env = {"STAR_MAX_QUEUE": "12", "STAR_PORT": "7000", "STAR_WARMUP": "false", "STAR_AUTH_TOKENS": "a,b"}
    cfg = _config(["--port", "7001"], env)
    assert cfg.batching.max_queue == 12 and cfg.batching.warmup is False
    assert cfg.network.port == 7001
    assert cfg.network.auth_tokens == ("a", "b")


def test_flag_names_are_unique_and_every_field_has_help() -> None:
    flags = list(flags_of(ServerConfig))
    names = [f.name for f in flags]
    assert len(names) == len(set(names))
    assert all(f.field.metadata["help"] for f in flags)
    sections = {f.name for f in dataclasses.fields(ServerConfig)}
    assert {f.section for f in flags} == sections
    assert "auth_tokens" not in names  # read from the file and STAR_AUTH_TOKENS, never a flag
    assert {"guard", "remote_url", "remote_max_concurrency", "max_conversation_tokens"} <= set(names)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-batch-tokens", "0"], "--max-batch-tokens must be >= 1"),
        (["--max-cuts", "0"], "--max-cuts must be >= 1"),
        (["--backend", "tgi"], "--backend tgi needs --remote-url"),
        (["--tls-cert", "c.pem"], "--tls-cert and --tls-key go together"),
        (["--omp-wait-policy", "spin"], "passive or active"),
    ],
)
def test_bad_values_name_their_flag(argv: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _config(argv)


def test_a_bad_variable_names_its_flag() -> None:
    with pytest.raises(ValueError, match="--port: cannot read 'many' as int"):
        _config([], {"STAR_PORT": "many"})


def test_sections_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        NetworkSettings().port = 1  # type: ignore[misc]


def test_help_groups_flags_by_sub_config() -> None:
    from scorer_server.flags import add_flags

    parser = argparse.ArgumentParser()
    add_flags(parser, ServerConfig)
    groups = {g.title: [a.dest for a in g._group_actions] for g in parser._action_groups}
    assert "max_batch_tokens" in groups["batching"] and "max_cuts" in groups["limits"]
    assert "remote_url" in groups["remote"] and "guard" in groups["guard"]
    assert sum(
        len(v) for k, v in groups.items() if k in {f.name for f in dataclasses.fields(ServerConfig)}
    ) == len(list(flags_of(ServerConfig)))
