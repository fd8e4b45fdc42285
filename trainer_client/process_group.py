"""Leaving torch.distributed's process group at the end of a launched run (torchrun, accelerate launch).

A gloo process whose group is still alive when the interpreter shuts down can abort there ("terminate
called without an active exception", pytorch#190489), and torchrun then fails a run that finished; CI
saw it twice, once with the group never destroyed and once with it destroyed while the trained model
(FSDP's device mesh, DDP's reducer) still held it. So the last references go first: the caller drops its
trainer, garbage collection frees the model's reference cycles, and only then is the group destroyed,
all while the interpreter is fully alive."""

from __future__ import annotations

import gc
import sys
from typing import Any


def leave_process_group() -> None:
    """Collect garbage, then destroy the default process group if this process joined one (a no-op
    otherwise, without importing torch)."""
    if "torch.distributed" not in sys.modules:  # never imported: no group (and --help stays instant)
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        gc.collect()  # models hold the group through reference cycles (hooks, FSDP state)
        dist.barrier()  # no process tears its connections down while another still uses them
        dist.destroy_process_group()
        gc.collect()


def release_trainer(trainer: Any) -> None:
    """Drop what a transformers/TRL trainer's accelerator holds (the prepared model, optimizer and
    data loaders), so that after the caller's `del trainer` nothing keeps the process group alive."""
    trainer.accelerator.free_memory()
