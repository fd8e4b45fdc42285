"""The suite's own scheduling under pytest-xdist (.ci/run: -n 2 --dist loadgroup): each module is one
group, so its module-scoped servers and engines are built once, on one worker (tests/conftest.py)."""

from __future__ import annotations

import os

import pytest


def test_xdist_groups_reach_the_scheduler(request: pytest.FixtureRequest) -> None:
    """pytest-xdist marks a grouped test by suffixing its node id with `@group`; without it the
    scheduler deals every test on its own (pytest 9.2 with pytest-xdist 3.8 did that silently: a module's
    fixtures started on both workers, the real vLLM twice)."""
    if not os.environ.get("PYTEST_XDIST_WORKER") or not request.config.getvalue("loadgroup"):
        pytest.skip("runs under pytest-xdist's --dist loadgroup (.ci/run)")
    assert request.node.nodeid.endswith("@test_suite_scheduling.py"), request.node.nodeid
