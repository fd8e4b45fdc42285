"""Waiting on a condition instead of sleeping: tests poll a counter, a metric or a flag until it holds,
bounded by a generous timeout, so that they are neither slow on an idle machine nor flaky on a loaded one."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T], timeout: float = 30.0, interval: float = 0.01, what: str = ""
) -> T:
    """Call `predicate` until it returns something truthy and return that; AssertionError (naming
    `what`) if it has not within `timeout` seconds. The timeout only bounds a failure: a passing wait
    returns as soon as the condition holds."""
    end = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        if time.monotonic() >= end:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what or predicate!r}")
        time.sleep(interval)
