"""The trainee's pieces before the loop runs: weights, LoRA adapters, optimizer and LR schedule."""

from __future__ import annotations

import math
from typing import Any

import torch

from trainer_client.train.config_parts import OptimConfig, TraineeConfig
from trainer_client.train.schedule import cosine_with_floor

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_trainee(trainee: TraineeConfig, device: Any) -> Any:
    """The model to finetune, in `trainee.dtype`, on `device`. These are the weights the optimizer
    updates (full finetuning): float32 unless the config opted in to low-precision updates (checked);
    `mixed_precision` sets the compute dtype separately."""
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(trainee.model, dtype=DTYPES[trainee.dtype])
    return model.to(device)


def with_lora(trainee: TraineeConfig, model: Any) -> Any:
    """`model` wrapped with the LoRA adapters `trainee` asks for (only they train). The adapters are float32
    even on a bfloat16/float16 base (`autocast_adapter_dtype`), so their updates do not round away."""
    from peft import LoraConfig, get_peft_model

    lcfg = LoraConfig(
        r=trainee.lora_r,
        lora_alpha=trainee.lora_alpha,
        lora_dropout=trainee.lora_dropout,
        target_modules=list(trainee.lora_targets),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lcfg, autocast_adapter_dtype=True)


def enable_activation_checkpointing(model: Any) -> None:
    """Recompute every decoder layer in the backward pass (`activation_checkpointing: true`), on the
    model under any LoRA wrapper. Non-reentrant checkpointing: it needs no input that requires grad (a
    frozen LoRA base) and recomputes under FSDP2's hooks (each block gathered again)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise ValueError(f"activation_checkpointing: {type(base).__name__} does not support it")
    base.activation_checkpointing_enable({"use_reentrant": False})


def optimizer_and_schedule(optim: OptimConfig, model: Any, total_steps: int) -> tuple[Any, Any]:
    """AdamW over the trainable parameters and the warmup + cosine-to-floor schedule."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=optim.lr, betas=(optim.beta1, optim.beta2), weight_decay=optim.weight_decay
    )
    warmup = math.ceil(optim.warmup_ratio * total_steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, cosine_with_floor(total_steps, warmup, optim.min_lr / optim.lr)
    )
    return optimizer, schedule


def allow_new_precision(mixed_precision: str) -> None:
    """accelerate keeps one process-wide state and refuses a second Accelerator with another precision;
    runs in one process (the programmatic API, tests) may each choose their own. The distributed part
    of the state (PartialState) is kept."""
    from accelerate.state import AcceleratorState

    shared = AcceleratorState._shared_state
    if shared and str(shared.get("_mixed_precision", shared.get("mixed_precision"))) != mixed_precision:
        AcceleratorState._reset_state(reset_partial_state=False)
