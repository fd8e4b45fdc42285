"""What `sharding: fsdp` holds per process and costs per step, against one process with the same global
batch.

A tiny trainee, full finetuning with sft (the state that FSDP shards: float32 weights, their gradients
and AdamW's two moments), trained twice with `star-train`'s Trainer:
  single   one process, batch_size 1 x grad_accum 4;
  sharded  two processes (torchrun, gloo on CPU), each batch_size 1 x grad_accum 2, `sharding: fsdp`.
Both train on the same examples per step (the sampler deals the permutation round-robin).

Each process records, just before its last optimizer step (gradients and moments both alive), the bytes
of the tensors it holds: parameters (its local shards), gradients and optimizer states.

Last line: {"bench": "train_sharded", "state_bytes_vs_single": X, "max_abs_loss_diff": Y,
            "step_time_vs_single": Z, ...}
  state_bytes_vs_single  per-process bytes under FSDP (the larger rank's) / the single process's (goal <= 0.6)
  max_abs_loss_diff      max over steps of |logged loss, sharded - single| (the global batch's loss)
  step_time_vs_single    mean step wall time (first step excluded), sharded / single
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def recipe(root: Path, out: str, examples: int, epochs: int, **kw: Any) -> dict[str, Any]:
    return dict(
        model=str(root / "trainee"),
        data=str(root / "data.jsonl"),
        output_dir=str(root / out),
        finetune="full",
        method="sft",
        batch_size=1,
        max_examples=examples,
        epochs=epochs,
        lr=1e-3,
        min_lr=1e-5,
        progress=False,
        torch_threads=1,
        cache_path="",
        **kw,
    )


def train(values: dict[str, Any]) -> dict[str, Any]:
    """Run one training (this process's part of it); its state bytes and its steps' metrics."""
    from trainer_client.train.config import build_config
    from trainer_client.train.fsdp_shard import state_bytes
    from trainer_client.train.loop import Trainer

    trainer = Trainer(build_config(values)).setup()
    seen: list[dict[str, int]] = []
    step = trainer.optimizer.step

    def recorded_step(*a: Any, **k: Any) -> Any:
        seen.append(state_bytes(trainer.model, trainer.optimizer))
        return step(*a, **k)

    trainer.optimizer.step = recorded_step
    try:
        trainer.fit()
    finally:
        trainer.close()
    rows = [json.loads(x) for x in (Path(values["output_dir"]) / "metrics.jsonl").read_text().splitlines()]
    return {"bytes": seen[-1], "losses": [r["loss"] for r in rows], "step_s": [r["step_s"] for r in rows]}


def worker(values_file: str) -> int:
    """One rank of the sharded run (started by torchrun): its figures to OUT/rank{r}.json."""
    values = json.loads(Path(values_file).read_text())
    got = train(values)
    rank = int(os.environ.get("RANK", "0"))
    (Path(values["output_dir"]) / f"rank{rank}.json").write_text(json.dumps(got))
    return 0


def sharded(root: Path, values: dict[str, Any], port: int) -> list[dict[str, Any]]:
    vf = root / "sharded.json"
    vf.write_text(json.dumps(values))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    cmd += [str(Path(__file__).resolve()), "--worker", str(vf)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"the sharded run failed:\n{done.stderr[-3000:]}")
    out = Path(values["output_dir"])
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def total(b: dict[str, int]) -> int:
    return b["parameters"] + b["gradients"] + b["optimizer"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the smallest trainee and 16 examples (< 45 s)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args.worker)
    from star_testing.scorer_process import free_port
    from star_testing.tiny_chat import save_tiny_run, save_tiny_trainee

    hidden, layers, examples, epochs = (64, 2, 16, 1) if args.quick else (256, 4, 64, 1)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = save_tiny_run(Path(tmp), examples=examples)
        save_tiny_trainee(root / "trainee", hidden=hidden, layers=layers)
        one = train(recipe(root, "single", examples, epochs, grad_accum=4))
        ranks = sharded(
            root, recipe(root, "sharded", examples, epochs, grad_accum=2, sharding="fsdp"), free_port()
        )
    losses = ranks[0]["losses"]
    diff = max(abs(a - b) for a, b in zip(losses, one["losses"], strict=True))

    def mean_step(r: dict[str, Any]) -> float:
        tail = r["step_s"][1:] or r["step_s"]
        return float(sum(tail) / len(tail))

    result = {
        "bench": "train_sharded",
        "state_bytes_vs_single": round(max(total(r["bytes"]) for r in ranks) / total(one["bytes"]), 3),
        "max_abs_loss_diff": float(f"{diff:.3g}"),
        "step_time_vs_single": round(max(mean_step(r) for r in ranks) / mean_step(one), 3),
        "single_bytes": one["bytes"],
        "sharded_bytes_per_rank": [r["bytes"] for r in ranks],
        "steps": len(losses),
        "processes": 2,
        "trainee": f"llama hidden {hidden} x {layers} layers, full finetuning, sft, float32",
        "wall_s": round(time.perf_counter() - t0, 1),
        "load_average": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
