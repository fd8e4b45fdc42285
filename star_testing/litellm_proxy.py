"""A real LiteLLM proxy (from the venv scripts/litellm_env.sh builds) as a subprocess on loopback, with
one model routed to an OpenAI-compatible upstream and star-gateway as its Generic Guardrail API."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from star_testing.http_process import HttpProcess

ROOT = Path(__file__).resolve().parents[1]
LITELLM = ROOT / ".venv-litellm" / "bin" / "litellm"
MASTER_KEY = "sk-star-litellm-test-5f0c2a9e7d1b4c3a8e6f"
"""The proxy refuses to start without a master key; clients present it as their API key."""


@dataclass(frozen=True)
class LiteLLMConfig:
    """What the proxy's config.yaml says."""

    model: str
    """The model name clients ask for (and the upstream serves)."""
    upstream: str
    """The upstream's base URL (its `/v1` routes are used)."""
    upstream_key: str
    guardrail_base: str
    """star-gateway's base URL; LiteLLM appends /beta/litellm_basic_guardrail_api."""
    modes: tuple[str, ...] = ("pre_call", "post_call")
    """pre_call sends the prompt (same litellm_call_id), post_call checks the answer."""
    sampling_rate: int = 1
    """`streaming_sampling_rate`: check every Nth streamed chunk (1: every chunk)."""
    transform_mode: str | None = None
    """`streaming_transform_mode`: None leaves LiteLLM's default (block_only); 'incremental_diff' withholds
    chunks until a check releases them (honouring `stream_holdback_chars`) and checks once more at the
    end of the stream."""

    def yaml(self) -> str:
        """The config file (JSON is YAML)."""
        config = {
            "model_list": [
                {
                    "model_name": self.model,
                    "litellm_params": {
                        "model": f"hosted_vllm/{self.model}",
                        "api_base": self.upstream.rstrip("/") + "/v1",
                        "api_key": self.upstream_key,
                    },
                }
            ],
            "guardrails": [
                {
                    "guardrail_name": "star",
                    "litellm_params": {
                        "guardrail": "generic_guardrail_api",
                        "mode": list(self.modes),
                        "api_base": self.guardrail_base,
                        "default_on": True,
                        "streaming_sampling_rate": self.sampling_rate,
                        **({"streaming_transform_mode": self.transform_mode} if self.transform_mode else {}),
                    },
                }
            ],
            "general_settings": {"master_key": MASTER_KEY},
        }
        return json.dumps(config, indent=2)


def litellm_process(config: LiteLLMConfig, port: int, workdir: Path) -> HttpProcess:
    """The proxy on 127.0.0.1:`port` (not started: `.launch()`, then `.wait()`); offline (the model cost
    map from the package, no telemetry)."""
    path = workdir / f"litellm-{port}.yaml"
    path.write_text(config.yaml())
    cmd = [str(LITELLM), "--config", str(path), "--host", "127.0.0.1", "--port", str(port),
           "--num_workers", "1"]  # fmt: skip
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False", "LITELLM_LOG": "ERROR"}
    return HttpProcess(cmd, port, workdir / f"litellm-{port}.log", health="/health/liveliness", env=env)
