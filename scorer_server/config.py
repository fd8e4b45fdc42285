"""Every server setting in one frozen object, built from command-line flags and STAR_* variables.

Each field is one flag (`--max-batch-tokens`) and one environment variable (`STAR_MAX_BATCH_TOKENS`);
a flag wins over the variable, the variable over the default.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from scorer_server.guards.loader import GuardConfig
from scorer_server.limits import Limits

BACKENDS = ("local", "vllm", "tgi")


def _opt(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True)
class ServerConfig:
    """Settings of `star-scorer serve`."""

    guard: str = _opt("", "guard model directory (Hugging Face layout with a chat template); required")
    preset: str = _opt(
        "llama-guard-3",
        "guard family preset: llama-guard-3, granite-guardian-3, shieldgemma, or custom (then give "
        "--safe-word and --unsafe-word)",
    )
    safe_word: str = _opt("", "verdict word of a safe response; overrides the preset's (e.g. safe, No)")
    unsafe_word: str = _opt(
        "", "verdict word of an unsafe response; overrides the preset's (e.g. unsafe, Yes)"
    )
    template_file: str = _opt("", "Jinja chat template file that replaces the guard tokenizer's own")
    template_kwargs: str = _opt(
        "",
        "JSON object of chat-template keyword arguments, replacing the preset's: a policy or category "
        'list, Granite\'s {"guardian_config": {"risk_name": "harm"}}, ShieldGemma\'s {"guideline": "..."}',
    )
    verdict_prefix: str = _opt(
        "auto",
        "text the guard writes before its verdict word; auto decides from the rendered template "
        '("\\n\\n" after a Llama-3 header that lacks it)',
    )
    attn_implementation: str = _opt("", "eager or sdpa; unset: the preset's choice (eager for Gemma 2)")
    dtype: str = _opt("float32", "weights dtype: float32, bfloat16, float16")
    device: str = _opt("cpu", "torch device for the local backend, e.g. cpu or cuda:0")
    host: str = _opt("127.0.0.1", "interface to listen on (0.0.0.0 in a container)")
    port: int = _opt(50051, "gRPC port")
    metrics_port: int = _opt(9090, "Prometheus metrics HTTP port; 0 turns metrics off")
    max_batch_tokens: int = _opt(16384, "padded guard tokens per forward (rows x longest row)")
    max_row_tokens: int = _opt(4096, "tokens in one row; longer responses are split into several parts")
    max_wait_ms: float = _opt(5.0, "longest time the batcher holds work while waiting to fill a forward")
    max_queue: int = _opt(1024, "requests queued or running before new ones get RESOURCE_EXHAUSTED")
    max_pending_tokens: int = _opt(
        2_000_000, "guard tokens of all queued or running work before new requests get RESOURCE_EXHAUSTED"
    )
    max_conversation_tokens: int = _opt(8192, "longest guard prompt (whole conversation) accepted")
    max_cuts: int = _opt(512, "most cuts one request may produce")
    max_judge_conversations: int = _opt(64, "most conversations in one Judge call")
    max_message_bytes: int = _opt(
        16 * 1024 * 1024, "largest gRPC message received or sent, bytes (gRPC's own default is 4 MiB)"
    )
    threads: int = _opt(0, "torch intra-op threads for the local backend; 0 keeps torch's default")
    omp_wait_policy: str = _opt(
        "passive",
        "OpenMP wait policy of torch's CPU threads: passive (an idle thread sleeps, leaving its core to "
        "the event loop, tokenisation and other processes) or active (it spins, fastest on dedicated "
        "cores); an OMP_WAIT_POLICY already set in the environment is kept",
    )
    grace_s: float = _opt(30.0, "on SIGTERM, how long in-flight work may take to finish")
    remote_health_interval_s: float = _opt(
        5.0, "remote backends: how often to check that an engine answers (health follows it; 0: off)"
    )
    watchdog_s: float = _opt(
        120.0, "health turns NOT_SERVING when waiting work makes no progress for this long (0: off)"
    )
    auth_tokens_file: str = _opt("", "file of accepted bearer tokens, one per line (also STAR_AUTH_TOKENS)")
    tls_cert: str = _opt("", "server certificate chain (PEM); turns TLS on with --tls-key")
    tls_key: str = _opt("", "server private key (PEM)")
    tls_client_ca: str = _opt("", "CA bundle (PEM) that client certificates must chain to: mutual TLS")
    backend: str = _opt("local", "where forwards run: local (this process) or a remote vllm / tgi fleet")
    remote_url: tuple[str, ...] = _opt((), "remote engine base URL(s) for vllm/tgi; repeat or comma-separate")
    remote_max_concurrency: int = _opt(64, "concurrent requests to the remote engine fleet")
    warmup: bool = _opt(True, "run one request through the model before reporting SERVING")
    log_level: str = _opt("info", "debug, info, warning or error")
    auth_tokens: tuple[str, ...] = field(default=(), repr=False, metadata={"cli": False})
    """Accepted bearer tokens (from --auth-tokens-file and STAR_AUTH_TOKENS); empty: no auth."""

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert)

    @property
    def limits(self) -> Limits:
        """The request limits every RPC and every backend enforces."""
        return Limits(self.max_conversation_tokens, self.max_cuts, self.max_judge_conversations)

    def guard_config(self) -> GuardConfig:
        """The guard settings, parsed (raises ValueError on a bad --template-kwargs)."""
        kwargs: dict[str, Any] | None = None
        if self.template_kwargs:
            try:
                kwargs = json.loads(self.template_kwargs)
            except json.JSONDecodeError as exc:
                raise ValueError(f"--template-kwargs is not valid JSON: {exc.msg}") from None
            if not isinstance(kwargs, dict):
                raise ValueError("--template-kwargs must be a JSON object")
        return GuardConfig(
            path=self.guard,
            preset=self.preset,
            dtype=self.dtype,
            device=self.device,
            attn_implementation=self.attn_implementation or None,
            template_file=self.template_file or None,
            template_kwargs=kwargs,
            safe_word=self.safe_word or None,
            unsafe_word=self.unsafe_word or None,
            verdict_prefix=None if self.verdict_prefix == "auto" else self.verdict_prefix,
        )

    def check(self) -> None:
        """Raise ValueError with an actionable message for an unusable combination."""
        if not self.guard:
            raise ValueError("--guard (or STAR_GUARD) is required: the guard model directory")
        self.guard_config().resolved_preset()  # unknown preset, custom without verdict words, bad JSON
        if self.attn_implementation not in ("", "eager", "sdpa"):
            raise ValueError(f"--attn-implementation must be eager or sdpa, not {self.attn_implementation!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"--backend must be one of {', '.join(BACKENDS)}, not {self.backend!r}")
        if self.backend != "local" and not self.remote_url:
            raise ValueError(f"--backend {self.backend} needs --remote-url")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("--tls-cert and --tls-key go together")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
        for name in (
            "max_batch_tokens",
            "max_row_tokens",
            "max_queue",
            "max_pending_tokens",
            "max_cuts",
            "max_message_bytes",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        if self.omp_wait_policy.lower() not in ("passive", "active"):
            raise ValueError(f"--omp-wait-policy must be passive or active, not {self.omp_wait_policy!r}")
        if self.max_wait_ms < 0 or self.grace_s < 0:
            raise ValueError("--max-wait-ms and --grace-s must be >= 0")


def _fields() -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(ServerConfig) if f.metadata.get("cli", True)]


def env_name(name: str) -> str:
    return "STAR_" + name.upper()


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per ServerConfig field; defaults are resolved later so the environment can fill them."""
    for f in _fields():
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata['help']} [env {env_name(f.name)}; default {_show(f.default)}]"
        if f.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif f.name == "remote_url":
            parser.add_argument(flag, action="append", default=None, help=help_text)
        else:
            kind = {"int": int, "float": float}.get(str(f.type), str)
            parser.add_argument(flag, type=kind, default=None, help=help_text)


def _show(value: Any) -> str:
    if value in ("", ()):
        return "unset"
    return str(value)


def _parse(f: dataclasses.Field[Any], raw: Any) -> Any:
    kind = str(f.type)
    if f.name == "remote_url":
        items = raw if isinstance(raw, list) else [raw]
        return tuple(u.strip() for item in items for u in str(item).split(",") if u.strip())
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        return str(raw).strip().lower() in ("1", "true", "yes", "on")
    if kind == "int":
        return int(raw)
    if kind == "float":
        return float(raw)
    return str(raw)


def config_from(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> ServerConfig:
    """Flags, then STAR_* environment variables, then defaults; reads the auth token sources."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for f in _fields():
        raw = getattr(args, f.name, None)
        if raw is None and env_name(f.name) in env:
            raw = env[env_name(f.name)]
        if raw is not None:
            try:
                values[f.name] = _parse(f, raw)
            except ValueError:
                raise ValueError(f"--{f.name.replace('_', '-')}: cannot read {raw!r} as {f.type}") from None
    tokens: list[str] = []
    path = values.get("auth_tokens_file", "")
    if path:
        try:
            with open(path) as fh:
                tokens += [line.strip() for line in fh if line.strip() and not line.startswith("#")]
        except OSError as exc:
            raise ValueError(f"cannot read --auth-tokens-file {path}: {exc.strerror}") from None
        if not tokens:
            raise ValueError(f"--auth-tokens-file {path} holds no tokens")
    tokens += [t.strip() for t in env.get("STAR_AUTH_TOKENS", "").split(",") if t.strip()]
    config = ServerConfig(**values, auth_tokens=tuple(tokens))
    config.check()
    return config
