"""Input moderation: the last user message judged before the upstream is called.

star.v1's Judge gives a verdict on the last (assistant) message of a conversation, so the user's
message is judged as a text in that place, after the conversation before it: P(unsafe) of the guard's
verdict on those words, wherever they came from."""

from __future__ import annotations

from star_client import AsyncScorerClient
from star_contract.types import Conversation, Message
from star_gateway.conversation import last_user_text


async def input_p_unsafe(client: AsyncScorerClient, conversation: Conversation) -> float | None:
    """The guard's P(unsafe) for the last user message (None when the request has none)."""
    messages = list(conversation.messages[:-1])  # without the empty answer
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].role == "user":
            text = last_user_text(conversation) or ""
            judged = Conversation((*messages[:i], Message("user", ""), Message("assistant", text)))
            verdicts = await client.judge([judged])
            return verdicts[0].p_unsafe
    return None
