"""StarDataCollator: TRL's padding, plus the STAR example index of every row."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from trainer_client.integrations.trl.dataset import STAR_INDEX


@dataclass
class StarDataCollator(DataCollatorForLanguageModeling):
    """Right-pads `input_ids` and `labels` as TRL does and adds `star_index` (a long tensor, one per row),
    by which `StarDSSTrainer` looks up the rows' STAR weights, keep flags and reference log-probs.
    A training batch without it is an error in `StarDSSTrainer.compute_loss`."""

    columns: tuple[str, ...] = (STAR_INDEX,)
    """The dataset columns this collator passes on beyond the model inputs (the trainer keeps them
    through `remove_unused_columns`); evaluation rows have none."""

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        out = super().torch_call([{k: e[k] for k in ("input_ids", "labels")} for e in examples])
        for c in self.columns:
            if c in examples[0]:
                out[c] = torch.tensor([int(e[c]) for e in examples], dtype=torch.long)
        return out
