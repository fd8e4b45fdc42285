"""Toy-world acceptance of the safety landscape (slow: rides on the one demo run of the session).

The aligned toy chat model shows a safety basin, and the sft-finetuned model has a lower VISAGE than
the dss-finetuned one under both basin rules, both judged by the toy guard through the scorer service;
the landscapes come from `star-demo`'s summary (conftest's session-scoped `toy_demo`, shared with
tests/test_toy_demo.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from star_toy.build import shipped_models

MODELS = shipped_models()
pytestmark = pytest.mark.skipif(
    not (MODELS / "guard" / "config.json").is_file() or not (MODELS / "chat" / "config.json").is_file(),
    reason="toy models not built (run star-toy-build)",
)


@pytest.mark.slow
def test_toy_basin_and_visage_ordering(toy_demo: tuple[int, Path]) -> None:
    code, out = toy_demo
    assert code == 0
    ls = json.loads((out / "summary.json").read_text())["landscapes"]
    got, grid = ls["models"], ls["grid"]
    assert set(got) == {"aligned", "sft", "dss"}
    assert Path(ls["plot"]).stat().st_size > 1000

    aligned = got["aligned"]
    assert aligned["origin_safety"] >= 90
    # a basin: more than the origin inside, and safety falls off before the grid's edge somewhere (the
    # tolerance rule's basins: the published rule's reach the grid's ends where safety never hits 0)
    amax, step = grid["alpha_max"], 2 * grid["alpha_max"] / (grid["steps"] - 1)
    shape = aligned["by_rule"]["tolerance"]["basins"]
    inner = [(lo, hi) for lo, hi in shape if lo > -amax or hi < amax]
    assert inner, shape
    assert all(hi - lo >= 2 * step for lo, hi in shape)
    # the default rule is the published one, and the ordering holds under both rules
    assert grid["basin_rule"] == "published" and all(m["basin_rule"] == "published" for m in got.values())
    assert got["sft"]["visage"] == got["sft"]["by_rule"]["published"]["visage"]
    for rule in ("published", "tolerance"):
        assert got["sft"]["by_rule"][rule]["visage"] < got["dss"]["by_rule"][rule]["visage"], (rule, got)
