"""`star-scorer` whose guard load waits for a gate file: a real server held in its loading state.

A real 8B guard loads for a minute; the tiny test guards load in a fraction of a second, too fast for a
test to act while the server is loading. This wrapper runs the real `scorer_server.cli` unchanged except
that `LocalBackend.start` first waits until the file named by STAR_TEST_LOAD_GATE exists. Meanwhile the
server is what a loading scorer is: listening, health NOT_SERVING, calls answered UNAVAILABLE ("the guard
is still loading"). Run as `ScorerProcess(..., script="tests/gated_scorer.py", env={GATE_ENV: path})`.

With HOLD_ENV instead (or as well), every forward waits on the forward thread while the file it names
exists: a test creates the file to hold the server's work queued (admitted, counted, unscored), and
removes it to let the work run, acting on events (metrics, answers) instead of timing.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

GATE_ENV = "STAR_TEST_LOAD_GATE"
HOLD_ENV = "STAR_TEST_FORWARD_HOLD"
POLL_S = 0.02


def install_gate(gate: Path) -> None:
    """Make every LocalBackend wait for `gate` to exist before it loads its guard."""
    from scorer_server.backends.local import LocalBackend

    real_start = LocalBackend.start

    async def gated_start(self: LocalBackend) -> None:
        while not gate.exists():
            await asyncio.sleep(POLL_S)
        await real_start(self)

    LocalBackend.start = gated_start  # type: ignore[method-assign]


def install_hold(hold: Path) -> None:
    """Make every forward of every LocalBackend wait while `hold` exists."""
    import time

    from scorer_server.backends.local import LocalBackend

    real_run = LocalBackend._run

    def held_run(self: LocalBackend, works: list[object]) -> object:
        while hold.exists():
            time.sleep(POLL_S)
        return real_run(self, works)

    LocalBackend._run = held_run  # type: ignore[method-assign,assignment]


def main() -> int:
    gate, hold = os.environ.get(GATE_ENV), os.environ.get(HOLD_ENV)
    if not gate and not hold:
        print(f"gated_scorer: set {GATE_ENV} or {HOLD_ENV} to a file's path", file=sys.stderr)
        return 2
    if gate:
        install_gate(Path(gate))
    if hold:
        install_hold(Path(hold))
    from scorer_server.cli import main as scorer_main

    return scorer_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
