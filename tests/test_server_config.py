"""ServerConfig is one sub-config per component, while flags and STAR_* variables stay flat."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

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
from scorer_server.tenants import TenantSettings


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
            "--grace-s", "4", "--log-level", "debug", "--no-head-cache", "--tenant-max-sessions", "2",
            "--tenant-max-pending-tokens", "5000",
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
    assert cfg.tenants == TenantSettings(max_sessions=2, max_pending_tokens=5000)
    assert cfg.batching.batcher_config(5000).tenant_max_pending_tokens == 5000


def test_variables_fill_what_flags_leave_and_flags_win() -> None:
    env = {"STAR_MAX_QUEUE": "12", "STAR_PORT": "7000", "STAR_WARMUP": "false", "STAR_AUTH_TOKENS": "a,b"}
    env |= {"STAR_TENANT_MAX_SESSIONS": "3"}
    cfg = _config(["--port", "7001"], env)
    assert cfg.batching.max_queue == 12 and cfg.batching.warmup is False
    assert cfg.network.port == 7001
    assert [t.token for t in cfg.network.auth_tokens] == ["a", "b"]
    assert cfg.tenants.max_sessions == 3 and cfg.tenants.max_pending_tokens == 0


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
        (["--tenant-max-sessions", "-1"], "--tenant-max-sessions must be >= 0"),
        (["--tenant-max-pending-tokens", "-5"], "--tenant-max-pending-tokens must be >= 0"),
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


def test_session_cache_help_names_the_eviction_rule_the_pool_uses() -> None:
    """Past --session-cache-mib the pool drops the cache whose next use looks furthest away, not the
    least recently used one (which, for sessions streaming at one pace, is the one needed next): the
    flag's help says so and points to the page that explains the rule."""
    parser = argparse.ArgumentParser()
    add_server_arguments(parser)
    text = " ".join(parser.format_help().split())
    about = text[text.rindex("--session-cache-mib") :][:400]  # the option, past the usage line
    assert "furthest away" in about and "least recently" not in about
    assert "docs/moderation.md" in about
    page = " ".join((Path(__file__).resolve().parents[1] / "docs" / "moderation.md").read_text().split())
    assert "drops the cache whose next use looks furthest away" in page


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


def test_optional_tokens_file_in_an_empty_directory_means_no_auth(tmp_path: Path) -> None:
    """Kubernetes mounts a missing optional Secret as an empty directory: auth off, with a warning."""
    tokens = tmp_path / "auth" / "tokens"
    tokens.parent.mkdir()
    cfg = _config(
        ["--host", "0.0.0.0"], {"STAR_AUTH_TOKENS_FILE": str(tokens), "STAR_AUTH_TOKENS_OPTIONAL": "1"}
    )
    assert cfg.network.auth_tokens == ()
    assert "auth is off" in (cfg.network.auth_warning() or "")
    tokens.write_text("secret\n")
    cfg = _config([], {"STAR_AUTH_TOKENS_FILE": str(tokens), "STAR_AUTH_TOKENS_OPTIONAL": "1"})
    assert [t.token for t in cfg.network.auth_tokens] == ["secret"] and cfg.network.auth_warning() is None


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ("no-dir", "cannot read --auth-tokens-file"),  # a typo in the directory
        ("other-key", "cannot read --auth-tokens-file"),  # the Secret's key is not `tokens`
        ("empty-file", "holds no tokens"),
    ],
)
@pytest.mark.parametrize("optional", [False, True])
def test_a_wrong_tokens_file_still_fails(tmp_path: Path, layout: str, message: str, optional: bool) -> None:
    """Only an absent file in an empty directory is optional; a typo never silently turns auth off."""
    tokens = tmp_path / "auth" / "tokens"
    if layout != "no-dir":
        tokens.parent.mkdir()
    if layout == "other-key":
        (tokens.parent / "token").write_text("secret\n")
    if layout == "empty-file":
        tokens.write_text("\n")
    env = {"STAR_AUTH_TOKENS_FILE": str(tokens), "STAR_AUTH_TOKENS_OPTIONAL": "1" if optional else "0"}
    with pytest.raises(ValueError, match=message):
        _config([], env)


def test_without_the_optional_switch_an_empty_mount_fails(tmp_path: Path) -> None:
    (tmp_path / "auth").mkdir()
    with pytest.raises(ValueError, match="cannot read --auth-tokens-file"):
        _config([], {"STAR_AUTH_TOKENS_FILE": str(tmp_path / "auth" / "tokens")})


def test_no_auth_on_a_public_interface_is_warned() -> None:
    assert "auth is off on 0.0.0.0" in (_config(["--host", "0.0.0.0"]).network.auth_warning() or "")
    assert _config([]).network.auth_warning() is None  # 127.0.0.1: local only
