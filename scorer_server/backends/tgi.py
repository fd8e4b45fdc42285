"""Hugging Face TGI as the guard engine, through huggingface_hub's maintained async client.

One request per cut: `text_generation(prompt, details=True, top_n_tokens=N, max_new_tokens=1,
do_sample=False)`. Temperature, top-k, top-p and the penalties are never set: TGI applies them before
its log-softmax, so any of them would make the log-probs stop being the model's own. TGI tokenises
with special tokens added, so the prompt goes without its leading BOS text.

TGI returns only the top N (MAX_TOP_N_TOKENS, default 5) log-probs plus the chosen token's. When a
verdict token is not among them, its log-prob is at most the smallest one returned, and that bound is
used in its place: a missing "unsafe" token makes the score a lower bound on P(safe), a missing
"safe" token an upper bound; with both missing the score is 0.5. Real guards put both verdict words
at the top of their first position, so the bound is almost never taken.
"""

from __future__ import annotations

from typing import Any

from huggingface_hub import AsyncInferenceClient
from huggingface_hub.errors import HfHubHTTPError, InferenceTimeoutError, OverloadedError

try:  # huggingface_hub >= 2 ships its own httpx fork
    import httpx2 as _httpx
except ImportError:  # pragma: no cover - huggingface_hub 1.x
    import httpx as _httpx  # type: ignore[no-redef]

from scorer_server.backends.http import RemoteEngineError, RemoteOverloaded, is_overloaded
from scorer_server.backends.prompts import PromptGuard
from scorer_server.backends.remote import Readout, RemoteBackend, RemoteConfig


def verdict_logprobs(tokens: list[tuple[int, float]], class_ids: tuple[int, ...]) -> tuple[float, ...]:
    """The verdict classes' log-probs from the (id, logprob) pairs returned at one position, with a
    missing token's log-prob bounded by the smallest returned one."""
    if not tokens:
        raise RemoteEngineError("TGI returned no log-probs for the first generated position")
    seen = {i: lp for i, lp in tokens}
    floor = min(seen.values())
    return tuple(seen.get(i, floor) for i in class_ids)


def _id_logprob(token: Any) -> tuple[int, float]:
    """(id, logprob) of a returned token; the client gives parsed objects or plain dicts."""
    if isinstance(token, dict):
        return int(token["id"]), float(token["logprob"])
    return int(token.id), float(token.logprob)


class TgiBackend(RemoteBackend):
    """STAR scores from a TGI fleet."""

    kind = "tgi"

    def __init__(self, guard: PromptGuard, config: RemoteConfig, top_n_tokens: int = 5) -> None:
        super().__init__(guard, config)
        self.top_n_tokens = top_n_tokens
        self._clients: dict[str, AsyncInferenceClient] = {}

    async def _open(self) -> None:
        for url in self.dispatcher.urls:
            self._clients[url] = AsyncInferenceClient(base_url=url, timeout=self.config.timeout_s)

    async def _close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()

    async def _readout(self, url: str, prompt: str, max_new_tokens: int, salt: str | None = None) -> Readout:
        # TGI takes no cache salt: its prefix cache is shared by every caller (docs/security.md).
        client = self._clients[url]
        try:
            out: Any = await client.text_generation(
                self.guard.strip_bos(prompt),
                details=True,
                max_new_tokens=max_new_tokens,
                top_n_tokens=self.top_n_tokens,
                do_sample=False,
            )
        except OverloadedError as err:
            raise RemoteOverloaded(f"TGI at {url} is overloaded") from err
        except InferenceTimeoutError as err:
            raise TimeoutError(f"TGI at {url} timed out") from err
        except _httpx.TransportError as err:
            raise ConnectionError(f"TGI at {url} is unreachable: {err}") from err
        except HfHubHTTPError as err:
            status = err.response.status_code if err.response is not None else 0
            if is_overloaded(status, str(err)):
                raise RemoteOverloaded(f"TGI at {url} is busy ({status})") from err
            raise RemoteEngineError(f"TGI at {url} answered {status}: {err}") from err
        details = getattr(out, "details", None)
        if details is None or not details.top_tokens or not details.tokens:
            raise RemoteEngineError(f"TGI at {url} returned no token details (is it a TGI server?)")
        first = [_id_logprob(t) for t in [*details.top_tokens[0], details.tokens[0]]]
        logprobs = verdict_logprobs(first, self.guard.class_ids)
        return Readout(logprobs=logprobs, text=str(out.generated_text or ""))
