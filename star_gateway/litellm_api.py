"""LiteLLM's Generic Guardrail API (`POST /beta/litellm_basic_guardrail_api`), answered with STAR.

LiteLLM posts `{"input_type": "request" | "response", "texts": [...], "litellm_call_id": ...,
"structured_messages": [...], "request_data": {...}, "additional_provider_specific_params": {...},
...}` and expects `{"action": "NONE" | "BLOCKED" | "GUARDRAIL_INTERVENED", "blocked_reason": ...}`.

- `response` (a `post_call` guardrail; on a stream, called with the whole answer so far, one text per
  choice): each text goes through the choice's Moderate session (guardrail_sessions.py); BLOCKED once
  the stop rule has fired, naming the offset and score. NONE carries `stream_holdback_chars`, per text
  the unscored tail past the hold-back window (`--hold-back-words`), which LiteLLM withholds from its
  client in `streaming_transform_mode: incremental_diff` until a later check covers it.
- `request` (`pre_call`): the last text is judged (Judge) when input moderation is on for the call;
  the prompt is remembered for the call's response checks (their conversation), as LiteLLM sends the
  same `litellm_call_id` on both.

`additional_provider_specific_params` (the guardrail's config in LiteLLM) may carry the options a
request's `star_moderation` field carries (every, unsafe_below, consecutive, cut, input).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from star_contract.types import Conversation, ModerationStop
from star_gateway.config import GatewayConfig
from star_gateway.conversation import chat_conversation
from star_gateway.errors import bad_request
from star_gateway.guardrail_sessions import GuardrailSessions
from star_gateway.input_check import input_p_unsafe
from star_gateway.metrics import GatewayMetrics
from star_gateway.options import FIELD, take_options

NONE, BLOCKED = "NONE", "BLOCKED"
PROMPTS_KEPT = 4096
"""Prompts remembered from `request` checks, for the conversation of the same call's response checks."""


class GuardrailEndpoint:
    """The endpoint's state: the sessions and the prompts of recent calls."""

    def __init__(self, config: GatewayConfig, sessions: GuardrailSessions, metrics: GatewayMetrics) -> None:
        self.config = config
        self.sessions = sessions
        self.metrics = metrics
        self.prompts: OrderedDict[str, str] = OrderedDict()

    async def answer(self, body: Any) -> dict[str, Any]:
        """The reply to one guardrail call (GatewayError for a malformed body; scorer errors propagate)."""
        if not isinstance(body, dict):
            raise bad_request("the body must be a JSON object")
        input_type = body.get("input_type")
        texts = body.get("texts") or []
        if input_type not in ("request", "response"):
            raise bad_request("input_type must be 'request' or 'response'", "input_type")
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise bad_request("texts must be a list of strings", "texts")
        params = body.get("additional_provider_specific_params") or {}
        options = take_options({FIELD: params} if params else {}, self.config)
        call_id = str(body.get("litellm_call_id") or "")
        if input_type == "request":
            reply = await self._request(call_id, texts, options.input)
        elif not options.enabled or not texts:
            reply = {"action": NONE}
        else:
            if not call_id:
                raise bad_request("litellm_call_id is needed to follow a response", "litellm_call_id")
            conversation = self._conversation(call_id, body.get("structured_messages"))
            reply = {"action": NONE}
            for index, text in enumerate(texts):
                stop = await self.sessions.check((call_id, index), conversation, options.moderate, text)
                if stop is not None:
                    reply = {"action": BLOCKED, "blocked_reason": _reason(stop, index)}
                    break
            if reply["action"] == NONE:  # honoured by LiteLLM's streaming_transform_mode incremental_diff
                hold = self.config.hold_back_words
                reply["stream_holdback_chars"] = [
                    self.sessions.held_chars((call_id, i), hold) for i in range(len(texts))
                ]
        self.metrics.guardrail_calls.labels(input_type, reply["action"]).inc()
        return reply

    async def _request(self, call_id: str, texts: list[str], judge: bool) -> dict[str, Any]:
        if call_id and texts:
            self.prompts[call_id] = texts[-1]
            self.prompts.move_to_end(call_id)
            while len(self.prompts) > PROMPTS_KEPT:
                self.prompts.popitem(last=False)
        if not judge or not texts:
            return {"action": NONE}
        p_unsafe = await input_p_unsafe(self.sessions.client, Conversation.from_pair(texts[-1], ""))
        if p_unsafe is not None and p_unsafe > self.config.input_unsafe_above:
            return {"action": BLOCKED, "blocked_reason": f"STAR input moderation: P(unsafe) {p_unsafe:.4f}"}
        return {"action": NONE}

    def _conversation(self, call_id: str, messages: Any) -> Conversation:
        """The conversation before the answer: LiteLLM's structured messages, else the call's prompt."""
        if isinstance(messages, list) and messages:
            last = messages[-1]
            if isinstance(last, dict) and last.get("role") == "assistant" and len(messages) > 1:
                messages = messages[:-1]  # the answer being checked, if LiteLLM includes it
            return chat_conversation(messages)
        return Conversation.from_pair(self.prompts.get(call_id, ""), "")


def _reason(stop: ModerationStop, index: int) -> str:
    return (
        f"STAR moderation stopped choice {index}: unsafe from offset {stop.offset} "
        f"(the cut ending at {stop.cut} has P(safe) {stop.p_safe:.4f})"
    )
