"""What the servicer scores with (`ScoringBackend`, base.py): the local engine behind the dynamic batcher
(local.py) with its live-moderation sessions (sessions.py), or a fleet of remote guard engines (vLLM,
TGI: remote.py, vllm.py, tgi.py), built here by `build_remote_backend`."""

from __future__ import annotations

from scorer_server.backends.base import ScoringBackend
from scorer_server.backends.http import RetryPolicy
from scorer_server.backends.prompts import PromptGuard, load_prompt_guard
from scorer_server.backends.remote import RemoteBackend, RemoteConfig
from scorer_server.guards.guard_config import GuardConfig

REMOTE_KINDS = ("vllm", "tgi")


def build_remote_backend(kind: str, guard_config: GuardConfig, config: RemoteConfig) -> ScoringBackend:
    """A backend that renders prompts here (tokenizer only) and runs forwards on `config.urls`.

    Raises ValueError with an actionable message for an unknown kind, no URL or a bad guard directory.
    """
    if kind not in REMOTE_KINDS:
        raise ValueError(f"remote backend must be one of {', '.join(REMOTE_KINDS)}, not {kind!r}")
    urls = [u for u in config.urls if u]
    bad = [u for u in urls if not u.startswith(("http://", "https://"))]
    if not urls or bad:
        raise ValueError(f"--remote-url needs http(s):// base URLs of the {kind} servers, got {urls}")
    guard = load_prompt_guard(guard_config, kind)
    backend: RemoteBackend
    if kind == "vllm":
        from scorer_server.backends.vllm import VllmBackend

        backend = VllmBackend(guard, config)
    else:
        from scorer_server.backends.tgi import TgiBackend

        backend = TgiBackend(guard, config)
    return backend


__all__ = [
    "REMOTE_KINDS",
    "PromptGuard",
    "RemoteBackend",
    "RemoteConfig",
    "RetryPolicy",
    "build_remote_backend",
    "load_prompt_guard",
]
