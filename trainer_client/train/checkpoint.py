"""Checkpoints: weights or adapter, optimizer, scheduler, RNG states and the data position.

A checkpoint is written to a temporary directory and renamed into place, so a crash mid-save leaves
only complete checkpoints behind; `state.json` names the optimizer step to resume from.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    root = Path(output_dir) / "checkpoints"
    done = sorted(p for p in root.glob("step-*") if (p / "state.json").is_file()) if root.is_dir() else []
    return done[-1] if done else None


def save_weights(model: Any, path: Path, lora: bool) -> None:
    """The adapter (LoRA) or the full model, in Hugging Face format."""
    model.save_pretrained(str(path))


def load_weights(model: Any, path: Path, lora: bool) -> None:
    from safetensors.torch import load_file

    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ValueError(f"checkpoint {path} holds no .safetensors weights")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    if lora:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, state)
    else:
        model.load_state_dict(state, strict=False)


def save_checkpoint(
    output_dir: str | Path,
    step: int,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    lora: bool,
    position: dict[str, Any],
) -> Path:
    root = Path(output_dir) / "checkpoints"
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_weights(model, tmp / ("adapter" if lora else "model"), lora)
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(rng_state(), tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, **position}, indent=2))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    return final


def checkpoint_state(path: Path, sharding: str, world: int) -> dict[str, Any]:
    """state.json of the checkpoint to resume from (with 'step'), refused with one line when another
    kind of run wrote it: sharded against unsharded, or a sharded run of another world size (each
    process's data shard and RNG state depend on it)."""
    state: dict[str, Any] = json.loads((path / "state.json").read_text())
    saved = state.get("sharding", "none")
    if saved != sharding:
        raise ValueError(
            f"{path} was written by a run with sharding: {saved}; resume it with sharding: {saved}"
        )
    if sharding == "fsdp" and state.get("world") != world:
        raise ValueError(
            f"{path} was saved by {state.get('world')} processes; resume it with as many, not {world}"
        )
    return state


def load_checkpoint(path: Path, model: Any, optimizer: Any, scheduler: Any, lora: bool) -> dict[str, Any]:
    """Restore everything saved by `save_checkpoint`; returns state.json (with 'step')."""
    load_weights(model, path / ("adapter" if lora else "model"), lora)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    set_rng_state(torch.load(path / "rng.pt", weights_only=False))
    state: dict[str, Any] = json.loads((path / "state.json").read_text())
    return state
