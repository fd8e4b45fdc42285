"""Checkpoints of a sharded run: each process writes its own shards of the weights (the adapter only,
with LoRA) and AdamW states with torch.distributed.checkpoint; the scheduler, the data position and one
RNG state per process beside them. The final model is gathered on rank 0 and saved as one ordinary
Hugging Face directory.

As `checkpoint.save_checkpoint`, a checkpoint is written to a temporary directory and renamed into
place by rank 0 once every process has written its part (the output directory must be shared by all
processes, e.g. one file system across nodes)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from trainer_client.train.checkpoint import rng_state, set_rng_state


def _options(lora: bool, full: bool = False) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(ignore_frozen_params=lora, full_state_dict=full, cpu_offload=full)


def _barrier() -> None:
    import torch.distributed as dist

    dist.barrier()


def save_sharded(
    output_dir: str | Path,
    step: int,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    lora: bool,
    position: dict[str, Any],
) -> Path:
    """Write checkpoints/step-N (every process calls this); returns its path."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    rank = dist.get_rank()
    root = Path(output_dir) / "checkpoints"
    final, tmp = root / f"step-{step:08d}", root / f".tmp-step-{step:08d}"
    if rank == 0:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    _barrier()
    msd, osd = get_state_dict(model, optimizer, options=_options(lora))
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(tmp / "sharded"))
    torch.save(rng_state(), tmp / f"rng-rank{rank}.pt")
    _barrier()
    if rank == 0:
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        meta = {"step": step, "sharding": "fsdp", "world": dist.get_world_size(), **position}
        (tmp / "state.json").write_text(json.dumps(meta, indent=2))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    _barrier()
    return final


def load_sharded(path: Path, model: Any, optimizer: Any, scheduler: Any, lora: bool) -> dict[str, Any]:
    """Restore what `save_sharded` wrote into the sharded model and optimizer (every process calls
    this, with the world size it was saved with: `checkpoint.checkpoint_state` checks); returns
    state.json."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    msd, osd = get_state_dict(model, optimizer, options=_options(lora))
    loaded: dict[str, Any] = {"model": msd, "optim": osd}
    dcp.load(loaded, checkpoint_id=str(path / "sharded"))
    set_state_dict(
        model,
        optimizer,
        model_state_dict=loaded["model"],
        optim_state_dict=loaded["optim"],
        options=_options(lora),
    )
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    set_rng_state(torch.load(path / f"rng-rank{dist.get_rank()}.pt", weights_only=False))
    state: dict[str, Any] = json.loads((path / "state.json").read_text())
    return state


def save_full(final_dir: str | Path, model: Any, tokenizer: Any, lora: bool) -> None:
    """The whole model (or the adapter) gathered on rank 0 and saved there with `save_pretrained`, as
    an unsharded run saves it (every process calls this)."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    full = get_model_state_dict(model, options=_options(lora, full=True))
    if dist.get_rank() == 0:
        model.save_pretrained(str(final_dir), state_dict=full)
        tokenizer.save_pretrained(str(final_dir))
    _barrier()
