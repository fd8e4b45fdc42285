"""Directions in weight space: seeded random directions with per-tensor norm matching, and checkpoint deltas.

A direction never needs to exist as a whole: `tensor(name, original)` builds the direction for one
weight tensor on demand. Random directions regenerate it from (seed, tensor name), so the same seed
gives the same direction on any run, for any subset of tensors, in any order.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, cast

import torch
from torch import nn


def is_norm_parameter(model: nn.Module, name: str) -> bool:
    """True for the weights and biases of normalisation layers (RMSNorm, LayerNorm, ...): never perturbed."""
    module_name, _, _ = name.rpartition(".")
    try:
        module = model.get_submodule(module_name) if module_name else model
    except AttributeError:
        module = None
    if module is not None and "norm" in type(module).__name__.lower():
        return True
    leaf = module_name.rpartition(".")[2].lower()
    return "norm" in leaf or leaf.startswith("ln_") or leaf in {"ln", "ln_f"}


def perturbed_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """The parameters a landscape direction moves: every parameter except normalisation weights.

    Embeddings and the LM head are included; tied weights appear once (`named_parameters` dedups).
    """
    for name, p in model.named_parameters():
        if not is_norm_parameter(model, name):
            yield name, p


def tensor_seed(seed: int, name: str) -> int:
    """A 63-bit generator seed derived from the direction seed and the tensor name."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class Direction(Protocol):
    """A direction in weight space, one tensor at a time."""

    name: str

    def names(self) -> list[str]:
        """Parameter names this direction moves (all others stay at their original values)."""
        ...

    def tensor(self, name: str, original: torch.Tensor) -> torch.Tensor:
        """The float32 direction for parameter `name`, on `original`'s device.

        `original` is the unperturbed tensor (the direction may depend on it, e.g. for norm matching).
        """
        ...


class RandomDirection:
    """d_W = g / ||g|| * ||W|| with g ~ N(0, I) drawn from a per-tensor seeded CPU generator.

    Draws happen on the CPU in float32 so a seed gives the same direction on every device; `cache`
    keeps the drawn tensors (one extra model's worth of float32 memory) instead of redrawing them.
    """

    def __init__(self, model: nn.Module, seed: int, cache: bool = False) -> None:
        self.seed = seed
        self.name = f"random(seed={seed})"
        self._names = [n for n, _ in perturbed_parameters(model)]
        self._cache: dict[str, torch.Tensor] | None = {} if cache else None

    def names(self) -> list[str]:
        return list(self._names)

    def tensor(self, name: str, original: torch.Tensor) -> torch.Tensor:
        if self._cache is not None and name in self._cache:
            return self._cache[name]
        gen = torch.Generator(device="cpu").manual_seed(tensor_seed(self.seed, name))
        d = torch.randn(tuple(original.shape), generator=gen, dtype=torch.float32)
        w_norm = torch.linalg.vector_norm(original.detach(), dtype=torch.float32).cpu()
        d_norm = torch.linalg.vector_norm(d)
        d.mul_(w_norm / d_norm if d_norm > 0 else 0.0)
        out = d.to(original.device)
        if self._cache is not None:
            self._cache[name] = out
        return out


class TensorSource(Protocol):
    """Where the other end of an interpolation path comes from."""

    def keys(self) -> set[str]: ...

    def shape(self, name: str) -> tuple[int, ...]: ...

    def get(self, name: str) -> torch.Tensor: ...


class SafetensorsSource:
    """Tensors read lazily, one at a time, from a checkpoint directory's *.safetensors files."""

    def __init__(self, path: str | Path) -> None:
        from safetensors import safe_open

        self.path = Path(path)
        files = sorted(self.path.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"no *.safetensors files in {self.path}")
        self._where: dict[str, Path] = {}
        for f in files:
            with safe_open(str(f), framework="pt") as fh:
                for k in fh.keys():  # noqa: SIM118 - safe_open handles are not mappings
                    self._where[k] = f

    def keys(self) -> set[str]:
        return set(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        from safetensors import safe_open

        with safe_open(str(self._where[name]), framework="pt") as fh:
            return tuple(fh.get_slice(name).get_shape())

    def get(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(str(self._where[name]), framework="pt") as fh:
            return fh.get_tensor(name)


class DictSource:
    """Tensors held in a dict (LoRA deltas, tests)."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self._t = tensors

    def keys(self) -> set[str]:
        return set(self._t)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._t[name].shape)

    def get(self, name: str) -> torch.Tensor:
        return self._t[name]


class DeltaDirection:
    """The interpolation direction: d_W = W_other - W (so alpha=0 is this model, alpha=1 the other).

    With `is_delta=True` the source already holds W_other - W (LoRA adapters); parameters missing
    from such a source are untouched.
    """

    def __init__(self, model: nn.Module, source: TensorSource, is_delta: bool = False, name: str = "delta"):
        self.name = name
        self._source = source
        self._is_delta = is_delta
        available = source.keys()
        params = dict(model.named_parameters())
        if is_delta:
            self._names = [n for n in params if n in available]
        else:
            missing = [n for n in params if n not in available]
            if missing:
                raise ValueError(
                    f"the other checkpoint lacks {len(missing)} parameter(s) of the model, e.g. {missing[:3]}"
                )
            self._names = list(params)
        for n in self._names:
            shape = source.shape(n)
            if shape != tuple(params[n].shape):
                raise ValueError(f"shape mismatch for {n}: {shape} vs {tuple(params[n].shape)}")

    def names(self) -> list[str]:
        return list(self._names)

    def tensor(self, name: str, original: torch.Tensor) -> torch.Tensor:
        other = self._source.get(name).to(device=original.device, dtype=torch.float32)
        if self._is_delta:
            return other
        return other - original.to(torch.float32)


def is_adapter_dir(path: str | Path) -> bool:
    """True for a peft adapter directory (it holds adapter_config.json)."""
    return (Path(path) / "adapter_config.json").is_file()


def adapter_base_path(path: str | Path) -> str:
    """The base model a peft adapter was trained on, from its adapter_config.json."""
    cfg = json.loads((Path(path) / "adapter_config.json").read_text())
    base = cfg.get("base_model_name_or_path")
    if not base:
        raise ValueError(
            f"{path}/adapter_config.json names no base_model_name_or_path; pass the base explicitly"
        )
    return str(base)


@torch.no_grad()
def lora_deltas(model: nn.Module, adapter_path: str | Path) -> dict[str, torch.Tensor]:
    """The weight change each LoRA module of a peft adapter makes, keyed by the model's parameter names.

    peft wraps `model` in place to compute the merged deltas (`get_delta_weight`), then unloads, which
    puts the original modules (and their untouched weight tensors) back.
    """
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    wrapped: Any = PeftModel.from_pretrained(model, str(adapter_path), is_trainable=False)
    deltas: dict[str, torch.Tensor] = {}
    try:
        for mod_name, module in wrapped.base_model.model.named_modules():
            if isinstance(module, LoraLayer):
                for adapter in module.active_adapters:
                    if adapter in module.lora_A:
                        d = cast(Any, module).get_delta_weight(adapter).to(torch.float32)
                        key = f"{mod_name}.weight"
                        deltas[key] = deltas[key] + d if key in deltas else d
            elif hasattr(module, "modules_to_save") and hasattr(module, "original_module"):
                for adapter, trained in module.modules_to_save.items():
                    if adapter in module.active_adapters:
                        for pname, p in trained.named_parameters():
                            orig = module.original_module.get_parameter(pname)
                            deltas[f"{mod_name}.{pname}"] = (p - orig).to(torch.float32)
    finally:
        wrapped.unload()
    return {k: v.detach().clone() for k, v in deltas.items()}
