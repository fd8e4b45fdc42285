"""Move a model to a point theta + sum_i c_i d_i in place, and put it back exactly.

`w += a*d; w -= a*d` does not give w back in floating point, so the original values are kept
outside the live model in an `OriginalStore`, and every point is written from them afresh
(`w = orig + a*d`): nothing drifts across points and restoring is a byte copy. The store holds
only the tensors a direction moves:

- "memory": clones on the CPU. For a GPU model this costs host RAM, not device memory.
- "disk": one safetensors file per tensor in a temporary directory, read back through mmap one
  tensor at a time, so a CPU model costs one model's RAM plus the tensor being written.
- "auto": "disk" for a CPU model, "memory" otherwise.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Literal, Protocol

import torch
from torch import nn

from trainer_client.landscape.directions import Direction

StoreKind = Literal["auto", "memory", "disk"]


class OriginalStore(Protocol):
    """Keeps the unperturbed value of each moved tensor."""

    def get(self, name: str) -> torch.Tensor:
        """The original tensor (same dtype and shape as the parameter; any device)."""
        ...

    def close(self) -> None: ...


class MemoryStore:
    """Original tensors cloned to CPU memory."""

    def __init__(self, params: dict[str, nn.Parameter]) -> None:
        self._t = {n: p.detach().to("cpu", copy=True) for n, p in params.items()}

    def get(self, name: str) -> torch.Tensor:
        return self._t[name]

    def close(self) -> None:
        self._t.clear()


class DiskStore:
    """Original tensors in per-tensor safetensors files, written once, read back lazily."""

    def __init__(self, params: dict[str, nn.Parameter], directory: str | Path | None = None) -> None:
        from safetensors.torch import save_file

        self._dir = Path(tempfile.mkdtemp(prefix="star-landscape-", dir=directory))
        self._files: dict[str, Path] = {}
        for i, (name, p) in enumerate(params.items()):
            f = self._dir / f"{i:05d}_{re.sub(r'[^A-Za-z0-9_.-]', '_', name)[:80]}.safetensors"
            save_file({"t": p.detach().to("cpu").contiguous()}, str(f))
            self._files[name] = f

    def get(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(str(self._files[name]), framework="pt") as fh:
            return fh.get_tensor("t")

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)


def make_store(
    kind: StoreKind, params: dict[str, nn.Parameter], directory: str | Path | None = None
) -> OriginalStore:
    """Build the store `kind` names for `params` (see the module docstring for "auto")."""
    if kind == "auto":
        on_cpu = all(p.device.type == "cpu" for p in params.values())
        kind = "disk" if on_cpu else "memory"
    if kind == "memory":
        return MemoryStore(params)
    if kind == "disk":
        return DiskStore(params, directory)
    raise ValueError(f"unknown store kind {kind!r}")


class Perturber:
    """Context manager that moves `model` along `directions` in place and restores it exactly on exit.

    >>> with Perturber(model, [d1, d2]) as pert:
    ...     pert.set_point([0.1, -0.2])   # model now at theta + 0.1 d1 - 0.2 d2
    ...     pert.restore()                # model bit-for-bit at theta again
    """

    def __init__(
        self,
        model: nn.Module,
        directions: Sequence[Direction],
        store: StoreKind = "auto",
        store_dir: str | Path | None = None,
    ) -> None:
        if not directions:
            raise ValueError("Perturber needs at least one direction")
        self.model = model
        self.directions = list(directions)
        params = dict(model.named_parameters())
        moved: dict[str, None] = {}
        for d in self.directions:
            for n in d.names():
                if n not in params:
                    raise ValueError(f"direction {d.name} names unknown parameter {n}")
                moved[n] = None
        self._params = {n: params[n] for n in moved}
        self._dir_names = [frozenset(d.names()) for d in self.directions]
        self._store = make_store(store, self._params, store_dir)
        self._dirty = False
        self._closed = False

    @property
    def moved_names(self) -> list[str]:
        return list(self._params)

    @torch.no_grad()
    def set_point(self, coefficients: Sequence[float]) -> None:
        """Write theta + sum_i coefficients[i] * d_i into the model (always from the originals)."""
        if len(coefficients) != len(self.directions):
            raise ValueError(f"expected {len(self.directions)} coefficients, got {len(coefficients)}")
        if all(c == 0 for c in coefficients):
            self.restore()
            return
        self._dirty = True
        for name, p in self._params.items():
            orig = self._store.get(name).to(p.device)
            # float32 weights are summed in place (no extra buffer); others via a float32 buffer
            value = p.data if p.dtype == torch.float32 else torch.empty_like(p, dtype=torch.float32)
            first = True
            for d, names, c in zip(self.directions, self._dir_names, coefficients, strict=True):
                if c != 0 and name in names:
                    if first:  # one fused pass: value = orig + c * d
                        torch.add(orig, d.tensor(name, orig), alpha=float(c), out=value)
                        first = False
                    else:
                        value.add_(d.tensor(name, orig), alpha=float(c))
            if first:  # no direction moves this tensor at this point
                value.copy_(orig)
            if value is not p.data:
                p.copy_(value)

    @torch.no_grad()
    def restore(self) -> None:
        """Put every moved tensor back to its original bytes."""
        for name, p in self._params.items():
            p.copy_(self._store.get(name))
        self._dirty = False

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.restore()
        finally:
            self._store.close()
            self._closed = True

    def __enter__(self) -> Perturber:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
