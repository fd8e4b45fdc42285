"""The session cache budget: which caches are dropped when the sessions' keys and values exceed it.

Sessions here are KVStates with buffers of a known size and a fake clock; "using" a session whose cache
was dropped is a miss (its next cut recomputes the whole trunk). The shapes of use are the server's:
sessions streaming at one pace (a cycle), one fast and one slow session, a session gone quiet.
"""

from __future__ import annotations

import torch

from scorer_server.backends.sessions import SessionPool
from scorer_server.engine.caches import KVState

TOKENS = 100
LAYER_BYTES = 2 * TOKENS * 8 * 4  # keys and values of 100 tokens, 8 floats each


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def cached() -> KVState:
    s = KVState()
    use(s)
    return s


def use(s: KVState) -> bool:
    """Run a cut: True if the cache was there (a hit), else recompute it (a miss)."""
    hit = bool(s.ids)
    if not hit:
        s.ids = list(range(TOKENS))
        s.buffers = [(torch.zeros(1, 1, TOKENS, 8), torch.zeros(1, 1, TOKENS, 8))]
    return hit


def run_cycle(pool: SessionPool, clock: Clock, states: list[KVState], rounds: int) -> int:
    """Every session pushes once a second, in turn; returns the hits after the first round."""
    hits = 0
    for r in range(rounds):
        for s in states:
            clock.t += 1.0 / len(states)
            hits += use(s) and r > 0
            pool.used([s])
    return hits


def test_sessions_streaming_at_one_pace_keep_most_of_their_caches() -> None:
    """Budget for 3 of 4 caches. Dropping the least recently used would drop the cache needed next,
    every cut a miss (0 hits); the pool drops the one just used, so 3 sessions in 4 keep theirs."""
    clock = Clock()
    pool = SessionPool(limit=8, budget_bytes=3 * LAYER_BYTES, clock=clock)
    states = [cached() for _ in range(4)]
    for s in states:
        pool.take(s)
    hits = run_cycle(pool, clock, states, rounds=10)
    assert hits >= 0.7 * 9 * 4  # measured: 27 of 36 (one session misses every round)
    assert pool.evictions <= 11  # one a round: the same session, just used, each time


def test_a_quiet_session_is_evicted_before_busy_ones() -> None:
    clock = Clock()
    pool = SessionPool(limit=8, budget_bytes=2 * LAYER_BYTES, clock=clock)
    busy, quiet = cached(), cached()
    pool.take(busy)
    pool.take(quiet)
    for _ in range(5):
        clock.t += 1.0
        use(busy)
        use(quiet)
        pool.used([busy, quiet])
    newcomer = cached()
    pool.take(newcomer)
    for _ in range(30):  # quiet stops pushing; busy and the newcomer go on
        clock.t += 1.0
        use(busy)
        use(newcomer)
        pool.used([busy, newcomer])
    assert not quiet.ids and busy.ids and newcomer.ids


def test_a_slow_session_gives_way_to_a_fast_one() -> None:
    """A fast session (a push every 0.1 s) and a slow one (every 2 s), budget for one cache: keeping
    the fast one's saves 20 recomputations for every one of the slow one's."""
    clock = Clock()
    pool = SessionPool(limit=8, budget_bytes=LAYER_BYTES, clock=clock)
    fast, slow = cached(), cached()
    pool.take(fast)
    pool.take(slow)
    fast_hits = slow_hits = 0
    for step in range(1, 201):
        clock.t = step * 0.1
        fast_hits += use(fast)
        pool.used([fast])
        if step % 20 == 0:
            slow_hits += use(slow)
            pool.used([slow])
    assert fast_hits >= 180 and slow_hits <= 2


def test_within_the_budget_nothing_is_dropped() -> None:
    clock = Clock()
    pool = SessionPool(limit=8, budget_bytes=4 * LAYER_BYTES, clock=clock)
    states = [cached() for _ in range(4)]
    for s in states:
        pool.take(s)
    assert run_cycle(pool, clock, states, rounds=5) == 4 * 4 and pool.evictions == 0
