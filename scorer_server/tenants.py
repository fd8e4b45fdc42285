"""Tenants: who a caller is (one bearer token = one tenant) and what one tenant may hold at once.

The tokens file (`--auth-tokens-file`, and `STAR_AUTH_TOKENS`, comma-separated) holds one entry a line:
`name:token` names the token's tenant, a bare `token` gets the stable label `t-` + the first 8 hex
digits of its SHA-256 (not a secret: the label cannot be turned back into the token, and it is what logs
and metrics show). Names are bounded by the file, so metric labels are too: no client-supplied string
ever becomes a label. Without tokens every caller is the one tenant `anonymous`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

ANONYMOUS = "anonymous"
"""The tenant of every call on a server without auth (and of the health checks, which need no token)."""
UNAUTHENTICATED = "unauthenticated"
"""The metrics label of calls refused for a missing or unknown token."""
RESERVED = frozenset({ANONYMOUS, UNAUTHENTICATED})
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
"""A tenant name: 1-32 letters, digits, '_', '.' or '-', starting with a letter or digit."""


@dataclass(frozen=True)
class TenantToken:
    """One accepted bearer token and the tenant it names."""

    tenant: str
    token: str = field(repr=False)


@dataclass(frozen=True)
class TenantSettings:
    """What one tenant may hold at once on this replica (0: only the server-wide limits apply)."""

    max_sessions: int = field(
        default=0,
        metadata={
            "help": "live-moderation sessions one tenant (bearer token) may hold open at once before its "
            "next gets RESOURCE_EXHAUSTED; 0: only --max-sessions",
            "flag": "tenant_max_sessions",
        },
    )
    max_pending_tokens: int = field(
        default=0,
        metadata={
            "help": "guard tokens of one tenant's queued or running work before its next request gets "
            "RESOURCE_EXHAUSTED (a tenant's lone request is always admitted); 0: only --max-pending-tokens",
            "flag": "tenant_max_pending_tokens",
        },
    )

    def check(self) -> None:
        for name in ("max_sessions", "max_pending_tokens"):
            if getattr(self, name) < 0:
                raise ValueError(f"--tenant-{name.replace('_', '-')} must be >= 0 (0: no per-tenant limit)")


def derived_name(token: str) -> str:
    """The label of a token listed without a name: `t-` + 8 hex digits of its SHA-256."""
    return "t-" + hashlib.sha256(token.encode()).hexdigest()[:8]


def parse_entry(entry: str) -> TenantToken:
    """`name:token` or `token` (ValueError, never quoting the entry, when the name is malformed)."""
    name, sep, token = entry.partition(":")
    if not sep:
        return TenantToken(derived_name(entry), entry)
    if not NAME.fullmatch(name):
        raise ValueError(
            "the tenant name before ':' must be 1-32 letters, digits, '_', '.' or '-', starting with a "
            "letter or digit (a token that itself holds ':' needs a name in front: name:to:ken)"
        )
    if name.lower() in RESERVED:
        raise ValueError(f"the tenant name {name!r} is reserved")
    if not token:
        raise ValueError(f"tenant {name!r} has no token after ':'")
    return TenantToken(name, token)


def parse_entries(entries: Iterable[tuple[str, str]]) -> tuple[TenantToken, ...]:
    """Each `(where, entry)` parsed; a malformed entry, a token listed twice or a tenant name used twice
    raises ValueError naming where (never the token)."""
    out: list[TenantToken] = []
    token_at: dict[str, str] = {}
    name_at: dict[str, str] = {}
    for where, entry in entries:
        try:
            parsed = parse_entry(entry)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        if parsed.token in token_at:
            raise ValueError(f"{where}: the same token as {token_at[parsed.token]}; list each token once")
        if parsed.tenant in name_at:
            raise ValueError(
                f"{where}: tenant {parsed.tenant!r} is already named by {name_at[parsed.tenant]}; "
                "each tenant has one token"
            )
        token_at[parsed.token] = name_at[parsed.tenant] = where
        out.append(parsed)
    return tuple(out)


def read_tenant_tokens(path: str, env: Mapping[str, str], optional: bool = False) -> tuple[TenantToken, ...]:
    """The tokens of `--auth-tokens-file` (lines; blank ones and `#` comments skipped) and of
    STAR_AUTH_TOKENS (comma-separated); empty: no auth. An unreadable or empty file is an error, except
    an absent one under `optional` (see `absent_optional_file`)."""
    entries: list[tuple[str, str]] = []
    if path and not (optional and absent_optional_file(path)):
        try:
            with open(path) as fh:
                lines = list(fh)
        except OSError as exc:
            raise ValueError(f"cannot read --auth-tokens-file {path}: {exc.strerror}") from None
        entries += [
            (f"--auth-tokens-file {path} line {n}", line.strip())
            for n, line in enumerate(lines, 1)
            if line.strip() and not line.startswith("#")
        ]
        if not entries:
            raise ValueError(f"--auth-tokens-file {path} holds no tokens")
    items = [t.strip() for t in env.get("STAR_AUTH_TOKENS", "").split(",")]
    entries += [(f"STAR_AUTH_TOKENS entry {n}", t) for n, t in enumerate(items, 1) if t]
    return parse_entries(entries)


def absent_optional_file(path: str) -> bool:
    """True when `path` does not exist and its directory exists and is empty: the shape of an optional
    Kubernetes Secret that was not created. A missing directory or one holding other files (a typo
    in the path or the Secret's key) is not absent-by-design and stays an error."""
    file = Path(path)
    if file.exists() or not file.parent.is_dir():
        return False
    try:
        return not any(file.parent.iterdir())
    except OSError:
        return False
