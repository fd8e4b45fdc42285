"""`star-train --plan`: the bytes per GPU a recipe needs, per way of running it, without loading weights.

The model is built on torch's meta device from its config alone (exact parameter counts for any
architecture, no memory). What is counted per GPU:

- weights, gradients and AdamW's two moments of what trains, in the recipe's `dtype` (the trained weights
  are the optimizer's masters: float32 for full finetuning);
- the reference: a frozen copy for full finetuning with `reference: auto` (LoRA's reference is the same
  model with its adapter off: free); none when precomputed, the default when sharded;
- activations kept for the backward pass of one micro-batch of `batch_size` x `max_length` tokens,
  counted tensor by tensor for a Llama-style decoder layer as transformers runs it (sdpa with a padding
  mask, so keys and values are repeated to every query head; with `activation_checkpointing` only each
  layer's input is kept, plus one layer's intermediates while it is recomputed), plus the logits: the
  trainee's logits and log-softmax in float32 and their two gradients at the
  start of the backward pass (the reference's logits and log-softmax take their place while the loss is
  computed). Mixed precision (bf16/fp16) keeps the layer activations in 2 bytes and the logits in 4;
- per strategy: one process (`single`); DDP (every GPU holds everything, plus DDP's gradient buckets, a
  second copy of the gradients); FSDP full sharding over the GPUs (weights, gradients and moments
  divided by the number of GPUs, plus the two gathered units in flight: the largest decoder layer or
  embedding in the compute dtype, and its unsharded gradient before the reduce-scatter); LoRA in one
  process (the base frozen in `dtype`, float32 adapters with their gradients and moments).

The float32 CPU figures are checked against the peak that torch's memory profiler records for the tiny
test models (tests/test_memory_plan.py, within 20%); the mixed-precision and multi-GPU figures are
arithmetic from the same counts, not measured here (no GPU).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from star_contract.errors import ConfigError

GIB = 2**30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
HEADROOM_BYTES = 2 * GIB
"""Per GPU, outside tensors: the CUDA context, NCCL buffers, allocator fragmentation."""
STRATEGIES = ("single", "ddp", "fsdp", "lora")


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs to know of a model: its parameter counts and layer sizes."""

    name: str
    params: int
    largest_unit: int
    """Parameters of the largest FSDP unit: a decoder layer, or the embedding or output head."""
    lora_params: int
    """Parameters of the LoRA adapters the recipe asks for (r x (in + out) per target linear)."""
    layers: int
    hidden: int
    intermediate: int
    q_dim: int
    kv_dim: int
    vocab: int


@dataclass(frozen=True)
class PlanSettings:
    """The recipe's settings that move memory (the recipe keys of the same names)."""

    finetune: str = "full"
    dtype: str = "float32"
    mixed_precision: str = "no"
    method: str = "dss"
    reference: str = "auto"
    kl_estimator: str = "k2"
    activation_checkpointing: bool = False
    batch_size: int = 4
    max_length: int = 2048
    gpus: int = 1
    gpu_gib: float = 80.0


@dataclass(frozen=True)
class MemoryRow:
    """Bytes per GPU for one strategy."""

    strategy: str
    gpus: int
    weights: int
    gradients: int
    optimizer: int
    reference: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.reference + self.activations

    def fits(self, gpu_gib: float) -> bool:
        return self.total + HEADROOM_BYTES <= gpu_gib * GIB


def model_shape(config: Any, name: str, lora_r: int = 16, lora_targets: tuple[str, ...] = ()) -> ModelShape:
    """Count parameters by building the model on the meta device (no memory, no weights read)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    params = sum(p.numel() for p in model.parameters())
    units = [sum(p.numel() for p in layer.parameters()) for layer in _decoder_layers(model)]
    units += [m.weight.numel() for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m]
    lora = 0
    for module_name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and module_name.rsplit(".", 1)[-1] in lora_targets:
            lora += lora_r * (module.in_features + module.out_features)
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return ModelShape(
        name=name,
        params=params,
        largest_unit=max(units),
        lora_params=lora,
        layers=config.num_hidden_layers,
        hidden=config.hidden_size,
        intermediate=config.intermediate_size,
        q_dim=heads * head_dim,
        kv_dim=getattr(config, "num_key_value_heads", heads) * head_dim,
        vocab=config.vocab_size,
    )


def _decoder_layers(model: Any) -> list[Any]:
    inner = getattr(model, "model", model)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise ConfigError(f"{type(model).__name__} has no decoder layers at .model.layers; no plan for it")
    return list(layers)


def activation_bytes(shape: ModelShape, s: PlanSettings) -> int:
    """Bytes kept for the backward pass of one micro-batch, at its peak (see the module docstring)."""
    tokens = s.batch_size * s.max_length
    c = 4 if s.mixed_precision == "no" else 2
    # per token and layer: the layer's input and the residual after attention, both norms' outputs,
    # q and k after RoPE, v, k and v repeated to every head, sdpa's output and its contiguous copy (the
    # o_proj input), and the MLP's gate, up, silu(gate) and their product
    per_layer = 4 * shape.hidden + 5 * shape.q_dim + 2 * shape.kv_dim + 4 * shape.intermediate
    if s.activation_checkpointing:  # every layer's input, and one layer's intermediates while recomputed
        layers = tokens * (shape.layers * shape.hidden + per_layer + 2 * shape.hidden) * c
    else:
        layers = tokens * (shape.layers * per_layer + 2 * shape.hidden) * c
    logits_copies = 4 + (3 if s.kl_estimator == "full" and s.method == "dss" else 0)
    logits = tokens * shape.vocab * 4 * logits_copies
    if c == 2:
        logits += tokens * shape.vocab * 2  # the head's bf16 output before its float32 copy
    mask = s.batch_size * s.max_length * s.max_length  # sdpa's boolean padding mask
    return layers + logits + mask


def plan_rows(shape: ModelShape, s: PlanSettings) -> list[MemoryRow]:
    """One row per strategy: `single`, `ddp` and `fsdp` finetune in full, `lora` trains adapters."""
    w = DTYPE_BYTES[s.dtype]
    c = w if s.mixed_precision == "no" else 2
    acts = activation_bytes(shape, s)
    needs_ref = s.method == "dss"
    full_ref = shape.params * w if needs_ref and s.reference == "auto" else 0
    p, n = shape.params, max(1, s.gpus)
    state = (p * w, p * w, 2 * p * w)  # weights, gradients, AdamW's two moments
    single = MemoryRow("single", 1, *state, full_ref, acts)
    ddp = MemoryRow("ddp", n, state[0], 2 * state[1], state[2], full_ref, acts)
    gathered = 2 * shape.largest_unit * c + shape.largest_unit * 4
    # sharded runs precompute the reference's log-probs: no second model in memory
    weights, grads, moments = (_share(x, n) for x in state)
    fsdp = MemoryRow("fsdp", n, weights + gathered, grads, moments, 0, acts)
    a = shape.lora_params
    lora = MemoryRow("lora", 1, p * w + a * 4, a * 4, 2 * a * 4, 0, acts)
    return [single, ddp, fsdp, lora]


def _share(total: int, n: int) -> int:
    return -(-total // n)


def format_plan(shape: ModelShape, s: PlanSettings, rows: list[MemoryRow]) -> str:
    """The plan as a text table in GiB, with whether each strategy fits the GPU."""
    lines = [
        f"memory plan for {shape.name}: {shape.params / 1e9:.2f} B parameters, {s.gpus} GPU(s) of "
        f"{s.gpu_gib:g} GiB, micro-batch {s.batch_size} x {s.max_length} tokens, dtype {s.dtype}, "
        f"mixed precision {s.mixed_precision}, method {s.method}"
        + (", activation checkpointing" if s.activation_checkpointing else ""),
        f"{'strategy':<8} {'GPUs':>4} {'weights':>8} {'grads':>8} {'AdamW':>8} {'ref':>8} {'activ.':>8} "
        f"{'total':>8}  fits",
    ]
    for r in rows:
        cells = (r.weights, r.gradients, r.optimizer, r.reference, r.activations, r.total)
        gib = " ".join(f"{x / GIB:8.1f}" for x in cells)
        lines.append(f"{r.strategy:<8} {r.gpus:>4} {gib}  {'yes' if r.fits(s.gpu_gib) else 'no'}")
    lines.append(
        f"GiB per GPU; 'fits' leaves {HEADROOM_BYTES // GIB} GiB for the CUDA context and buffers. DDP and "
        "FSDP divide the global batch, not the micro-batch: activations are per GPU."
    )
    return "\n".join(lines)


def settings_from_recipe(values: dict[str, Any], gpus: int, gpu_gib: float) -> PlanSettings:
    """PlanSettings from a recipe's keys (the recipe's defaults for the keys it leaves out)."""
    from dataclasses import fields

    from trainer_client.train.config import recipe_defaults

    defaults = recipe_defaults()
    keys = [f.name for f in fields(PlanSettings) if f.name not in ("gpus", "gpu_gib")]
    picked = {k: values.get(k, defaults[k]) for k in keys}
    if picked["dtype"] not in DTYPE_BYTES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPE_BYTES)}, not {picked['dtype']!r}")
    if gpus < 1 or gpu_gib <= 0:
        raise ConfigError("--gpus must be >= 1 and --gpu-gib > 0")
    try:
        picked["batch_size"], picked["max_length"] = int(picked["batch_size"]), int(picked["max_length"])
    except (TypeError, ValueError):
        raise ConfigError("batch_size and max_length must be integers") from None
    return PlanSettings(**picked, gpus=gpus, gpu_gib=gpu_gib)


def plan_text(values: dict[str, Any], gpus: int, gpu_gib: float) -> str:
    """`star-train --plan`: the recipe's model config (no weights), its settings, the table."""
    model = str(values.get("model") or "")
    settings = settings_from_recipe(values, gpus, gpu_gib)
    targets = values.get("lora_targets", ("q_proj", "k_proj", "v_proj", "o_proj"))
    if isinstance(targets, str):
        targets = tuple(t.strip() for t in targets.split(","))
    shape = model_shape(load_model_config(model), model, int(values.get("lora_r", 16)), tuple(targets))
    return format_plan(shape, settings, plan_rows(shape, settings))


def load_model_config(model: str) -> Any:
    """A model directory's config.json (no weights), or one of KNOWN_SHAPES by name."""
    from transformers import AutoConfig

    if model in KNOWN_SHAPES:
        return KNOWN_SHAPES[model]()
    path = Path(model)
    if not (path / "config.json").is_file():
        known = ", ".join(sorted(KNOWN_SHAPES))
        raise ConfigError(
            f"--plan needs a model directory with config.json, or one of: {known} (got {model!r})"
        )
    try:
        return AutoConfig.from_pretrained(str(path))
    except (ValueError, OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read {path / 'config.json'}: {exc}") from None


def _llama_3_2_1b() -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, head_dim=64, tie_word_embeddings=True,
    )  # fmt: skip


def _llama_3_1_8b() -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, tie_word_embeddings=False,
    )  # fmt: skip


def _mistral_small_24b() -> Any:
    from transformers import MistralConfig

    return MistralConfig(
        vocab_size=131072, hidden_size=5120, intermediate_size=32768, num_hidden_layers=40,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, tie_word_embeddings=False,
        sliding_window=None,
    )  # fmt: skip


KNOWN_SHAPES = {
    "llama-3.2-1b": _llama_3_2_1b,
    "llama-3.1-8b": _llama_3_1_8b,
    "mistral-small-24b": _mistral_small_24b,
}
"""Published model shapes (their config.json values) for planning before a checkpoint is at hand."""
