"""Tenants without a server: the tokens file's names, the per-tenant books of the batcher and the
session pool, and the order in which the batcher serves tenants (driven step by step, no clock)."""

from __future__ import annotations

import asyncio
import hashlib
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from scorer_server.backends.sessions import SessionPool
from scorer_server.batcher import INTERACTIVE, Batcher, BatcherConfig
from scorer_server.budget import TokenBudget
from scorer_server.engine.caches import KVState
from scorer_server.errors import LimitReached
from scorer_server.tenants import ANONYMOUS, derived_name, read_tenant_tokens
from star_testing import fork_server

ROOT = Path(__file__).resolve().parents[1]


# -- who a token is --
def test_an_old_tokens_file_stays_valid_and_each_bare_token_gets_a_derived_name(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# accepted tokens\nalpha-secret\n\n  beta-secret  \n")
    tokens = read_tenant_tokens(str(path), {})
    assert [t.token for t in tokens] == ["alpha-secret", "beta-secret"]
    want = "t-" + hashlib.sha256(b"alpha-secret").hexdigest()[:8]
    assert tokens[0].tenant == want == derived_name("alpha-secret")
    assert tokens[1].tenant == derived_name("beta-secret") != tokens[0].tenant
    assert "alpha-secret" not in repr(tokens)  # the token never shows in a repr (nor in a log line)


def test_named_tokens_from_the_file_and_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("acme:tok-1\nglobex.eu:tok:with:colons\n")
    tokens = read_tenant_tokens(str(path), {"STAR_AUTH_TOKENS": "initech:tok-3, tok-4"})
    assert [(t.tenant, t.token) for t in tokens] == [
        ("acme", "tok-1"),
        ("globex.eu", "tok:with:colons"),
        ("initech", "tok-3"),
        (derived_name("tok-4"), "tok-4"),
    ]


@pytest.mark.parametrize(
    ("lines", "env", "message"),
    [
        ("acme:SeCrEt\nother:SeCrEt\n", "", "line 2: the same token as --auth-tokens-file .* line 1"),
        ("acme:SeCrEt\n", "SeCrEt", "STAR_AUTH_TOKENS entry 1: the same token as .*line 1"),
        ("acme:SeCrEt\nacme:other\n", "", "line 2: tenant 'acme' is already named by .*line 1"),
        ("bad name:SeCrEt\n", "", "line 1: the tenant name before ':' must be 1-32 letters"),
        (":SeCrEt\n", "", "line 1: the tenant name before ':'"),
        ("x" * 33 + ":SeCrEt\n", "", "line 1: the tenant name before ':'"),
        ("anonymous:SeCrEt\n", "", "line 1: the tenant name 'anonymous' is reserved"),
        ("acme:\n", "", "line 1: tenant 'acme' has no token"),
        (f"{derived_name('SeCrEt')}:other\nSeCrEt\n", "", "line 2: tenant 't-[0-9a-f]{8}' is already"),
    ],
)
def test_a_bad_line_is_refused_naming_where_but_never_the_token(
    tmp_path: Path, lines: str, env: str, message: str
) -> None:
    path = tmp_path / "tokens"
    path.write_text(lines)
    with pytest.raises(ValueError, match=message) as err:
        read_tenant_tokens(str(path), {"STAR_AUTH_TOKENS": env})
    assert "SeCrEt" not in str(err.value)


def test_a_bad_tokens_file_stops_the_server_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("acme:SeCrEt\nacme:other\n")
    cmd = [sys.executable, "-m", "scorer_server.cli", "serve", "--guard", str(tmp_path)]
    done = fork_server.run([*cmd, "--auth-tokens-file", str(path)], cwd=ROOT, timeout=120)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("star-scorer serve: error: --auth-tokens-file"), lines
    assert "tenant 'acme' is already named" in lines[0] and "SeCrEt" not in done.stderr


# -- the batcher's books and order --
def _batcher(pending: int = 1_000_000, tenant_pending: int = 0, rows: int = 2) -> Batcher[int, int]:
    """A batcher that is never started: the test takes its forwards itself (`_take`), one at a time."""
    cfg = BatcherConfig(
        TokenBudget(max_batch_tokens=10 * rows),
        max_pending_tokens=pending,
        tenant_max_pending_tokens=tenant_pending,
    )
    return Batcher(cfg, lambda items: items, cost=lambda i: 10, executor=ThreadPoolExecutor(1))


def _forwards(b: Batcher[int, int]) -> list[list[int]]:
    out = []
    while batch := b._take():
        out.append([e.item for e in batch])
    return out


def test_a_tenant_over_its_pending_tokens_is_refused_while_others_are_admitted() -> None:
    async def main() -> None:
        b = _batcher(pending=60, tenant_pending=25)
        lone = b.submit([1, 2, 3], 0, "a")  # 30 tokens, over 25: admitted, nothing else of a's is pending
        with pytest.raises(
            LimitReached, match=r"tenant a holds 30 guard tokens.*--tenant-max-pending-tokens"
        ) as err:
            b.submit([4], 0, "a")
        assert err.value.limit == "tenant_max_pending_tokens" and err.value.retry_after_s > 0
        b.submit([5, 6], 0, "b")  # 20 of b's own: fits b's 25 and the server's 60
        assert (b.tenant_tokens("a"), b.tenant_tokens("b"), b.pending_tokens) == (30, 20, 50)
        with pytest.raises(LimitReached, match="--max-pending-tokens") as err:
            b.submit([7, 8], 0, "c")  # c's own 20 fit; the server's 60 do not
        assert err.value.limit == "max_pending_tokens"
        lone.cancel()
        await asyncio.sleep(0)  # the futures' done-callbacks settle the ticket
        assert b.tenant_tokens("a") == 0
        b.submit([4], 0, "a")  # a's room is back

    asyncio.run(main())


def test_one_tenant_s_backlog_does_not_hold_back_another_tenant() -> None:
    """Forwards of 2 rows; tenant a queues 6 rows before b and c queue 1 each. Served by age alone, b and
    c would wait for a's 3 forwards; taking turns, each is in one of the first two."""

    async def main() -> None:
        b = _batcher(rows=2)
        for i in range(6):
            b.submit([i], 0, "a")
        b.submit([100], 0, "b")
        b.submit([200], 0, "c")
        assert _forwards(b) == [[0, 100], [200, 1], [2, 3], [4, 5]]

    asyncio.run(main())


def test_priority_orders_a_tenant_s_own_work_but_does_not_jump_other_tenants() -> None:
    async def main() -> None:
        b = _batcher(rows=1)
        for i, prio in enumerate([0, 9, 9, 9]):
            b.submit([i], prio, "a")
        b.submit([100], 0, "b")
        assert _forwards(b) == [[1], [100], [2], [3], [0]]

    asyncio.run(main())


def test_live_moderation_cuts_still_go_first_whoever_sends_them() -> None:
    async def main() -> None:
        b = _batcher(rows=1)
        for i in range(3):
            b.submit([i], 5, "a")
        b.submit([100], INTERACTIVE, "b")
        b.submit([200], INTERACTIVE, "a")
        assert _forwards(b) == [[100], [200], [0], [1], [2]]

    asyncio.run(main())


def test_a_single_tenant_is_served_by_priority_then_age() -> None:
    async def main() -> None:
        b = _batcher(rows=2)
        for i, prio in enumerate([0, 0, 3, 0, 3]):
            b.submit([i], prio, ANONYMOUS)
        assert _forwards(b) == [[2, 4], [0, 1], [3]]

    asyncio.run(main())


# -- the session pool's books --
def test_a_tenant_at_its_session_limit_is_refused_while_others_open_theirs() -> None:
    pool = SessionPool(limit=3, budget_bytes=1 << 20, tenant_limit=2)
    a1, a2, a3, b1, c1 = (KVState() for _ in range(5))
    pool.take(a1, "a")
    pool.take(a2, "a")
    with pytest.raises(
        LimitReached, match=r"tenant a has 2 moderation sessions open.*--tenant-max-sessions"
    ) as err:
        pool.take(a3, "a")
    assert err.value.limit == "tenant_max_sessions"
    pool.take(b1, "b")
    with pytest.raises(LimitReached, match="--max-sessions") as err:
        pool.take(c1, "c")
    assert err.value.limit == "max_sessions"
    pool.give(a1)
    assert (pool.held("a"), pool.held("b")) == (1, 1)
    pool.take(a3, "a")
