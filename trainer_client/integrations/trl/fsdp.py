"""StarDSSTrainer under FSDP2 through accelerate (`SFTConfig(fsdp=True, fsdp_config={"version": 2})`
or `accelerate launch` with an FSDP config): what it refuses, and FSDP on CPU processes.

accelerate only turns its FSDP plugin on for accelerator devices: `AcceleratorState` sets
`DistributedType.FSDP` for MULTI_GPU / MULTI_XPU / ... and leaves CPU processes (MULTI_CPU, gloo) as
DDP, silently dropping the plugin. FSDP2 itself (`fully_shard`) runs on CPU with gloo (star-train's
`sharding: fsdp` uses it), so on CPU processes the trainer switches the state to FSDP with the plugin
asked for, and accelerate's own FSDP2 preparation then shards the model as it does on GPUs."""

from __future__ import annotations

import os
from typing import Any

FSDP2 = "fsdp_config={'version': 2} in the SFTConfig, or fsdp_version: 2 in the accelerate config"


def _env_fsdp() -> bool:
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def fsdp_version(args: Any) -> int | None:
    """The FSDP version this run asks accelerate for (None: no FSDP): from the SFTConfig's `fsdp` /
    `fsdp_config`, else from an `accelerate launch` FSDP config (its environment)."""
    plugin = getattr(args, "fsdp_plugin_args", None)
    if plugin is not None:
        return int(plugin.get("fsdp_version", 2))
    if _env_fsdp():
        return int(os.environ.get("FSDP_VERSION", "1"))
    return None


def check_fsdp(args: Any, method: str, lambda_kl: float, reference: str, peft: bool, ref_model: Any) -> None:
    """Refuse, with one line each, the FSDP settings StarDSSTrainer cannot serve."""
    version = fsdp_version(args)
    if version is None:
        return
    if version != 2:
        raise ValueError(
            f"StarDSSTrainer shards with FSDP2 only, not FSDP{version} (the reference forward with the "
            f"adapter off calls the model under its wrapper, which FSDP1 flattens): set {FSDP2}"
        )
    frozen_copy = method == "dss" and lambda_kl > 0 and reference == "auto" and not peft
    if frozen_copy and ref_model is None:
        raise ValueError(
            "StarDSSTrainer under FSDP with full finetuning keeps no frozen reference copy (it would be a "
            "whole model on every process): set StarDSSConfig(reference='precomputed') (the reference "
            "log-probs computed once by the sharded model before training), or pass ref_model="
        )


def shard_cpu_processes(accelerator: Any, plugin_args: dict[str, Any] | None) -> bool:
    """When FSDP was asked for and accelerate left CPU processes without it (MULTI_CPU: DDP), make them
    FSDP with that plugin, as `AcceleratorState` does for GPUs. Call right after the Accelerator is
    built, before anything is prepared. Returns whether it switched."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = accelerator.state
    # FSDP without a plugin: a state rebuilt in a process whose earlier run was switched (PartialState
    # keeps the distributed type, as accelerate's own switch leaves it on GPUs)
    dropped = state.distributed_type in (DistributedType.MULTI_CPU, DistributedType.FSDP)
    if not (dropped and state.device.type == "cpu" and _env_fsdp()):
        return False
    if getattr(state, "fsdp_plugin", None) is not None:
        return False
    plugin = FullyShardedDataParallelPlugin(**(plugin_args or {}))
    if state.mixed_precision != "no":
        plugin.set_mixed_precision(state.mixed_precision)
    state.distributed_type = DistributedType.FSDP
    state.fsdp_plugin = plugin
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    return True
