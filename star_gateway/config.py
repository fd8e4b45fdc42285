"""The gateway's settings: one frozen dataclass, filled from flags, then STAR_GATEWAY_* variables, then
the defaults. Each field's metadata carries its `--help` text, so the flags explain themselves."""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from star_client import ClientConfig
from star_contract.types import CutKind, ModerateOptions

ENV_PREFIX = "STAR_GATEWAY_"
UNBOUNDED = -1
"""`hold_back_words` value: forward every chunk as soon as it has been pushed to the scorer."""


def _f(default: Any, help: str, **meta: Any) -> Any:
    return field(default=default, metadata={"help": help, **meta})


@dataclass(frozen=True)
class GatewayConfig:
    """star-gateway: an OpenAI-compatible HTTP server that moderates a model's answers as they stream."""

    upstream: str = _f("http://127.0.0.1:8000", "base URL of the OpenAI-compatible upstream (vLLM, TGI, ...)")
    scorer: str = _f(
        "127.0.0.1:50051", "scorer address(es): host:port, a comma-separated list, or dns:///name:port"
    )
    host: str = _f("127.0.0.1", "address to listen on")
    port: int = _f(8080, "HTTP port to listen on")
    every: int = _f(5, "a cut after every N words (or guard tokens, with --cut guard_tokens)")
    cut: str = _f("words", "what --every counts: words or guard_tokens", choices=("words", "guard_tokens"))
    unsafe_below: float = _f(0.5, "a cut whose P(safe) is below this is unsafe")
    consecutive: int = _f(1, "how many unsafe cuts in a row stop the response")
    hold_back_words: int = _f(
        0,
        "how far the text forwarded to the client may run ahead of the moderation: at most this many "
        "words past the end of the last cut scored safe. 0: only scored text is forwarded, each piece "
        "as soon as a safe score covers it (nothing unscored reaches the client); N: up to N unscored "
        "words (lower latency, and the client sees at most N words past the stop); -1: every chunk is "
        "forwarded as soon as it has been sent to the scorer (lowest latency; text may pass the stop "
        "by as much as the scorer's latency lets through)",
    )
    input_moderation: bool = _f(
        False, "judge the last user message (Judge) before calling the upstream; refuse it if unsafe"
    )
    input_unsafe_above: float = _f(
        0.5, "the last user message is refused when Judge's P(unsafe) is above this"
    )
    fail_open: bool = _f(
        False,
        "when the scorer cannot be reached or a session is lost, pass the answer on unmoderated "
        "(default: fail closed, refusing or ending the answer with a moderation-unavailable chunk)",
    )
    reopen: int = _f(1, "re-open a session lost with its scorer replica on another replica up to N times")
    request_overrides: bool = _f(
        True,
        "let a request's `star_moderation` body field change these options (including turning "
        "moderation off for it); off: the field is removed and ignored",
    )
    upstream_timeout_s: float = _f(600.0, "longest wait for the upstream's answer or its next chunk")
    scorer_deadline_s: float = _f(10.0, "longest wait for the scorer per call (a session's open included)")
    ready_timeout_s: float = _f(
        2.0, "/readyz: longest wait for the scorer's GetInfo before the gateway reports itself not ready"
    )
    tls: bool = _f(False, "reach the scorer with TLS (implied by --tls-ca/--tls-cert)")
    tls_ca: str | None = _f(None, "CA bundle (PEM) that signed the scorer's certificate")
    tls_cert: str | None = _f(None, "client certificate (PEM) for mutual TLS to the scorer")
    tls_key: str | None = _f(None, "client private key (PEM) for mutual TLS to the scorer")
    tls_server_name: str | None = _f(None, "name to check the scorer's certificate against")
    token_file: str | None = _f(None, "file holding the scorer's bearer token (default: $STAR_AUTH_TOKEN)")
    guardrail_idle_s: float = _f(
        60.0,
        "LiteLLM guardrail endpoint: a response's session with no call for this long is closed "
        "(LiteLLM sends no last call)",
    )
    guardrail_max_sessions: int = _f(
        256, "LiteLLM guardrail endpoint: sessions open at once; the least recently used closes beyond it"
    )
    metrics_path: str = _f("/metrics", "HTTP path of the Prometheus metrics ('' turns them off)")
    log_level: str = _f("info", "log level (JSON lines on stderr)")

    def moderate_options(self) -> ModerateOptions:
        """The deployment's Moderate options (a request may override them, see `RequestOptions`)."""
        return ModerateOptions(
            every=self.every,
            unsafe_below=self.unsafe_below,
            consecutive=self.consecutive,
            kind=CutKind(self.cut),
        )

    def client_config(self) -> ClientConfig:
        """How star_client reaches the scorer (addresses, TLS, token, deadline)."""
        return ClientConfig(
            addresses=tuple(a.strip() for a in self.scorer.split(",") if a.strip()),
            deadline_s=self.scorer_deadline_s,
            tls=self.tls,
            tls_ca_file=self.tls_ca,
            tls_cert_file=self.tls_cert,
            tls_key_file=self.tls_key,
            tls_server_name=self.tls_server_name,
            auth_token_file=self.token_file,
        )

    def check(self) -> None:
        """ValueError naming the setting when one is out of range."""
        rules = [
            (self.every >= 1, "--every must be >= 1"),
            (0.0 <= self.unsafe_below <= 1.0, "--unsafe-below must be in [0, 1]"),
            (self.consecutive >= 1, "--consecutive must be >= 1"),
            (self.hold_back_words >= UNBOUNDED, "--hold-back-words must be >= -1"),
            (self.reopen >= 0, "--reopen must be >= 0"),
            (self.ready_timeout_s > 0, "--ready-timeout-s must be > 0"),
            (self.guardrail_max_sessions >= 1, "--guardrail-max-sessions must be >= 1"),
            (self.upstream.startswith(("http://", "https://")), "--upstream must be an http(s) URL"),
        ]
        for ok, message in rules:
            if not ok:
                raise ValueError(message)


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def parser() -> argparse.ArgumentParser:
    """`star-gateway`'s flags, one per GatewayConfig field (defaults None: the environment fills them)."""
    doc = (GatewayConfig.__doc__ or "").strip()
    ap = argparse.ArgumentParser(
        prog="star-gateway",
        description=doc,
        epilog="Every flag also reads STAR_GATEWAY_<NAME> (e.g. STAR_GATEWAY_UPSTREAM); a flag wins. "
        "A request may carry options of its own in the body field `star_moderation` (see docs/gateway.md).",
    )
    for f in dataclasses.fields(GatewayConfig):
        option = "--" + f.name.replace("_", "-")
        text = f"{f.metadata['help']} [env {env_name(f.name)}; default {f.default}]"
        if f.type == "bool":
            ap.add_argument(option, dest=f.name, action=argparse.BooleanOptionalAction, help=text)
        else:
            kind = {"int": int, "float": float}.get(str(f.type), str)
            ap.add_argument(option, dest=f.name, type=kind, choices=f.metadata.get("choices"), help=text)
    return ap


def from_argv(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """The config from flags, then STAR_GATEWAY_* variables, then defaults; ValueError on a bad value."""
    args = vars(parser().parse_args(argv))
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in dataclasses.fields(GatewayConfig):
        if args.get(f.name) is not None:
            values[f.name] = args[f.name]
        elif (raw := environ.get(env_name(f.name))) is not None:
            values[f.name] = _parse(str(f.type), raw, env_name(f.name))
    config = GatewayConfig(**values)
    config.check()
    return config


def _parse(kind: str, raw: str, name: str) -> Any:
    try:
        if kind == "bool":
            if raw.lower() not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                raise ValueError(raw)
            return raw.lower() in ("1", "true", "yes", "on")
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a valid {kind}") from None
    return raw
