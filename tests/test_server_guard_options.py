"""`star-scorer serve` exposes every guard option: custom verdict words, template file and kwargs."""

from __future__ import annotations

import argparse

import pytest

from scorer_server.config import add_server_arguments, config_from


def _config(argv: list[str], env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    parser = argparse.ArgumentParser()
    add_server_arguments(parser)
    return config_from(parser.parse_args(argv), env or {})


def test_guard_options_reach_the_guard_config() -> None:
    cfg = _config(
        [
            "--guard", "/g", "--preset", "custom", "--safe-word", "ok", "--unsafe-word", "bad",
            "--template-file", "/t.jinja", "--template-kwargs", '{"categories": "S1: x"}',
            "--verdict-prefix", "", "--attn-implementation", "eager",
        ]
    )  # fmt: skip
    g = cfg.guard.guard_config()
    assert (g.preset, g.safe_word, g.unsafe_word) == ("custom", "ok", "bad")
    assert g.template_file == "/t.jinja" and g.template_kwargs == {"categories": "S1: x"}
    assert g.verdict_prefix == "" and g.attn_implementation == "eager"
    assert g.resolved_preset().template_kwargs == {"categories": "S1: x"}


def test_defaults_keep_the_preset() -> None:
    g = _config([], {"STAR_GUARD": "/g", "STAR_PRESET": "granite-guardian-3"}).guard.guard_config()
    assert g.verdict_prefix is None and g.template_kwargs is None and g.safe_word is None
    assert g.resolved_preset().template_kwargs == {"guardian_config": {"risk_name": "harm"}}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--preset", "custom"], "--safe-word"),
        (["--preset", "nope"], "known presets"),
        (["--template-kwargs", "[1"], "not valid JSON"),
        (["--template-kwargs", "[1]"], "JSON object"),
        (["--attn-implementation", "flash"], "eager or sdpa"),
    ],
)
def test_bad_guard_options_are_explained(argv: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _config(["--guard", "/g", *argv])
