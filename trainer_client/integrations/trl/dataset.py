"""A TRL training dataset turned into STAR examples, and the tokenised dataset TRL then trains on.

TRL would tokenise conversations itself; `StarDSSTrainer` tokenises them the way `star-train` does
(`trainer_client.data.build_examples`: the chat template rendered to text, tokenised without added
special tokens, with character offsets so STAR cuts land on token boundaries) and hands TRL a dataset
that is already tokenised (`input_ids`, `labels` with -100 off the labels) plus the column
`star_index`, the example's index into the STAR examples, by which each batch's weights are looked up.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from star_contract.types import Conversation, Message

STAR_INDEX = "star_index"
"""The dataset column naming each row's STAR example (kept through `remove_unused_columns`)."""


def _messages(value: Any, where: str) -> list[Message]:
    if not isinstance(value, list) or not all(isinstance(m, Mapping) and "role" in m for m in value):
        raise ValueError(f"{where}: expected a list of {{role, content}} messages")
    return [Message(str(m["role"]), str(m.get("content") or "")) for m in value]


def to_conversation(row: Mapping[str, Any], where: str) -> Conversation:
    """One dataset row as a conversation: TRL's conversational `messages` or `prompt` + `completion`
    (lists of messages), or our `prompt` + `response` strings. TRL's plain-text rows are refused: STAR
    needs a user turn and an assistant turn to show the guard."""
    if "messages" in row:
        return Conversation(tuple(_messages(row["messages"], where)))
    if "prompt" in row and "completion" in row:
        if isinstance(row["prompt"], str):
            raise ValueError(
                f"{where}: prompt-completion rows must be conversational (lists of messages) for STAR-DSS: "
                "the guard judges an assistant response to a user turn, and the trainee's chat template "
                "places the labels"
            )
        return Conversation((*_messages(row["prompt"], where), *_messages(row["completion"], where)))
    if "prompt" in row and "response" in row:
        return Conversation.from_pair(str(row["prompt"]), str(row["response"]))
    if "input_ids" in row:
        raise ValueError(f"{where}: the dataset is already tokenised; STAR-DSS needs the conversations' text")
    raise ValueError(
        f"{where}: STAR-DSS needs conversational rows ('messages', or 'prompt' + 'completion' as messages, "
        f"or 'prompt' + 'response'); found columns {sorted(row)}"
    )


def conversations(rows: Iterable[Mapping[str, Any]]) -> list[Conversation]:
    return [to_conversation(r, f"train_dataset row {i}") for i, r in enumerate(rows)]


def check_trl_options(args: Any, data_collator: Any) -> None:
    """Refuse the SFTConfig options STAR-DSS cannot honour, naming them."""
    if getattr(args, "packing", False):
        raise ValueError(
            "StarDSSTrainer does not support packing=True: STAR weights, labels and the reference's "
            "log-probs are per example, and the loss is normalised per micro-batch as in star-train. "
            "Set packing=False."
        )
    if getattr(args, "padding_free", False):
        raise ValueError("StarDSSTrainer does not support padding_free=True; set padding_free=False")
    if getattr(args, "completion_only_loss", None) is False:
        raise ValueError(
            "StarDSSTrainer trains on assistant tokens only (the guard scores responses; prompt tokens carry "
            "no loss): completion_only_loss=False is not supported. Leave it None or True."
        )
    if data_collator is not None:
        raise ValueError("StarDSSTrainer brings its own data collator (StarDataCollator); pass none")
    if getattr(args, "truncation_mode", "keep_start") != "keep_start":
        raise ValueError("StarDSSTrainer truncates like star-train: truncation_mode must be keep_start")
    if getattr(args, "pad_to_multiple_of", None):
        raise ValueError("StarDSSTrainer pads each batch to its longest row: leave pad_to_multiple_of unset")


def tokenised_rows(examples: Iterable[Any]) -> dict[str, list[Any]]:
    """The columns TRL trains on: input_ids, labels (-100 off the label tokens) and star_index."""
    ids, labels, index = [], [], []
    for e in examples:
        ids.append(list(e.input_ids))
        labels.append([t if m else -100 for t, m in zip(e.input_ids, e.label_mask, strict=True)])
        index.append(e.index)
    return {"input_ids": ids, "labels": labels, STAR_INDEX: index}
