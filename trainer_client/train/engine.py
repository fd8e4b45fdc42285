"""How the loop's model is distributed, behind one interface: `AccelerateEngine` (one process, or a
whole copy per process under DDP: accelerate's `prepare`) or `FsdpEngine` (train/fsdp_engine.py:
parameters, gradients and AdamW states sharded with FSDP2)."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, Protocol

from trainer_client.data import Example
from trainer_client.loss import LossOutput
from trainer_client.train.checkpoint import load_checkpoint, save_checkpoint
from trainer_client.train.config_parts import OptimConfig
from trainer_client.train.reference import Compute, reference_logprobs


class Engine(Protocol):
    """What the loop asks of its distribution strategy (`acc` is the run's Accelerator)."""

    load_device: Any
    """Where `load_trainee` puts the weights."""

    def wrap(self, model: Any) -> Any:
        """The trainee (after any LoRA adapter) ready for its optimizer to be built over it."""

    def prepare(self, model: Any, optimizer: Any) -> tuple[Any, Any]:
        """The model to call and the optimizer to step."""

    def trainee(self, model: Any) -> Any:
        """The model under any wrapper (for the reference forward with the adapter off)."""

    def accumulating(self, model: Any, last: bool) -> AbstractContextManager[Any]:
        """The context of a micro-batch's backward: gradients are synchronised only on the `last`."""

    def backward(self, loss: Any) -> None: ...

    def clip(self, model: Any, max_norm: float) -> None: ...

    def global_stats(self, stats: list[LossOutput], tokens: int) -> tuple[list[LossOutput], int]:
        """The step's statistics the metrics row is computed from, and its tokens."""

    def reference_compute(self, examples: Sequence[Example]) -> Compute:
        """How the reference log-probs are computed before training."""

    def save(
        self, out: Path, step: int, model: Any, opt: Any, sched: Any, lora: bool, pos: dict[str, Any]
    ) -> None: ...

    def load(self, path: Path, model: Any, opt: Any, sched: Any, lora: bool) -> dict[str, Any]: ...

    def save_final(self, final_dir: Path, model: Any, tokenizer: Any, lora: bool) -> None: ...


class AccelerateEngine:
    """One process, or DDP with a whole copy per process (accelerate's `prepare`); checkpoints and the
    final model written by the main process."""

    def __init__(self, acc: Any) -> None:
        self.acc = acc
        self.load_device = acc.device

    def wrap(self, model: Any) -> Any:
        return model

    def prepare(self, model: Any, optimizer: Any) -> tuple[Any, Any]:
        prepared: tuple[Any, Any] = self.acc.prepare(model, optimizer)
        return prepared

    def trainee(self, model: Any) -> Any:
        return self.acc.unwrap_model(model)

    def accumulating(self, model: Any, last: bool) -> AbstractContextManager[Any]:
        return nullcontext() if last else self.acc.no_sync(model)

    def backward(self, loss: Any) -> None:
        self.acc.backward(loss)

    def clip(self, model: Any, max_norm: float) -> None:
        self.acc.clip_grad_norm_(model.parameters(), max_norm)

    def global_stats(self, stats: list[LossOutput], tokens: int) -> tuple[list[LossOutput], int]:
        return stats, tokens  # this process's own (the main process's row is the one logged)

    def reference_compute(self, examples: Sequence[Example]) -> Compute:
        return reference_logprobs

    def save(
        self, out: Path, step: int, model: Any, opt: Any, sched: Any, lora: bool, pos: dict[str, Any]
    ) -> None:
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            save_checkpoint(out, step, self.trainee(model), opt, sched, lora, pos)
        self.acc.wait_for_everyone()

    def load(self, path: Path, model: Any, opt: Any, sched: Any, lora: bool) -> dict[str, Any]:
        return load_checkpoint(path, self.trainee(model), opt, sched, lora)

    def save_final(self, final_dir: Path, model: Any, tokenizer: Any, lora: bool) -> None:
        if self.acc.is_main_process:
            self.trainee(model).save_pretrained(str(final_dir))
            tokenizer.save_pretrained(str(final_dir))


def engine_for(optim: OptimConfig, acc: Any) -> Engine:
    """The engine `optim.sharding` names."""
    if optim.sharding == "fsdp":
        from trainer_client.train.fsdp_engine import FsdpEngine

        return FsdpEngine(optim, acc)
    return AccelerateEngine(acc)
