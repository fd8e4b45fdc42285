"""vLLM as the guard engine, through its OpenAI-compatible completions route.

One request per cut: `POST {url}/v1/completions` with the cut's guard prompt as token ids (exactly the
local engine's tokenisation, so no BOS is added twice), `max_tokens: 1`, and
`logprob_token_ids: [safe_id, unsafe_id]`, which makes vLLM return the log-probs of exactly those two
tokens at the generated position; `return_tokens_as_token_ids: true` keys them as "token_id:<id>".
vLLM's log-probs are raw (before temperature or penalties) under its default `logprobs_mode`
(raw_logprobs); a server started with a processed mode would change the scores. Automatic prefix
caching (on by default) makes the per-cut requests of one response share their prompt's KV blocks.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from scorer_server.backends.http import RemoteEngineError, RemoteOverloaded, is_overloaded
from scorer_server.backends.prompts import PromptGuard
from scorer_server.backends.remote import Readout, RemoteBackend, RemoteConfig


class VllmBackend(RemoteBackend):
    """STAR scores from a vLLM fleet."""

    kind = "vllm"

    def __init__(self, guard: PromptGuard, config: RemoteConfig) -> None:
        super().__init__(guard, config)
        self._session: aiohttp.ClientSession | None = None

    async def _open(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.config.timeout_s)
        self._session = aiohttp.ClientSession(timeout=timeout)

    async def _close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def request_body(self, prompt: str, max_new_tokens: int, salt: str | None = None) -> dict[str, Any]:
        """The completions request for one guard prompt (with `cache_salt` when `salt` is given)."""
        body: dict[str, Any] = {
            "prompt": self.guard.encode(prompt),
            "max_tokens": max_new_tokens,
            "temperature": 0.0,
            "logprob_token_ids": list(self.guard.class_ids),
            # vLLM 0.32 refuses logprob_token_ids without logprobs ("`logprobs` must be set"); the
            # requested ids then appear in top_logprobs[0] next to the sampled token.
            "logprobs": 1,
            "return_tokens_as_token_ids": True,
        }
        if self.config.model:
            body["model"] = self.config.model
        if salt:
            body["cache_salt"] = salt
        return body

    async def _readout(self, url: str, prompt: str, max_new_tokens: int, salt: str | None = None) -> Readout:
        assert self._session is not None, "start() first"
        try:
            async with self._session.post(
                f"{url}/v1/completions", json=self.request_body(prompt, max_new_tokens, salt)
            ) as r:
                text = await r.text()
                if r.status != 200:
                    if is_overloaded(r.status, text):
                        raise RemoteOverloaded(f"vLLM at {url} is busy ({r.status})")
                    raise RemoteEngineError(f"vLLM at {url} answered {r.status}: {text[:300]}")
                payload = await r.json(content_type=None)
        except aiohttp.ClientConnectionError as err:
            raise ConnectionError(f"vLLM at {url} is unreachable: {err}") from err
        return self.parse(payload)

    def parse(self, payload: dict[str, Any]) -> Readout:
        """The verdict classes' log-probs (and text) from a completions answer."""
        try:
            choice = payload["choices"][0]
            first = choice["logprobs"]["top_logprobs"][0]
            logprobs = tuple(float(first[f"token_id:{i}"]) for i in self.guard.class_ids)
        except (KeyError, IndexError, TypeError, ValueError) as err:
            raise RemoteEngineError(
                "vLLM's answer lacks the verdict log-probs (choices[0].logprobs.top_logprobs[0] keyed "
                f"'token_id:<id>'); does this vLLM support logprob_token_ids on completions? ({err!r})"
            ) from err
        return Readout(logprobs=logprobs, text=str(choice.get("text", "")))
