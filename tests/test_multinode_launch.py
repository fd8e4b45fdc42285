"""deploy/k8s/multinode as a run: the Job's own torchrun line and recipe, launched as two "nodes" on this
machine (two torchrun agents meeting through the c10d rendezvous on 127.0.0.1, one CPU process each,
gloo), trains the sharded path and equals one process with the same global batch.

What is changed from the manifest, and why: the rendezvous endpoint (pod 0's DNS name -> 127.0.0.1),
processes per node (8 GPUs -> 1 CPU process), and, through `--set` after the recipe, what a test run
needs (the tiny trainee and its data, an offline scores file instead of the scorer Service, a short
run, float32 compute so that the comparison is exact to 1e-5). Everything else (the launcher and its
flags, `star-train --config <the ConfigMap's recipe>`, `sharding: fsdp`, full finetuning with dss and a
precomputed reference) is the manifest's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

from star_testing.scorer_process import free_port
from star_testing.tiny_chat import save_tiny_run
from trainer_client.scoring.precompute import main as precompute_main
from trainer_client.train import run_training
from trainer_client.train.config import load_config

ROOT = Path(__file__).resolve().parents[1]
MULTINODE = ROOT / "deploy" / "k8s" / "multinode"
pytestmark = pytest.mark.slow


def manifest() -> tuple[dict[str, Any], list[str]]:
    """The Job's spec and its trainer container's command."""
    job = yaml.safe_load((MULTINODE / "train-job.yaml").read_text())
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return job["spec"], list(container["command"])


def flag(command: list[str], name: str) -> str:
    (value,) = [a.split("=", 1)[1] for a in command if a.startswith(f"{name}=")]
    return value


def test_the_job_runs_star_train_sharded_under_torchrun_on_every_node() -> None:
    spec, command = manifest()
    assert command[0] == "torchrun" and flag(command, "--rdzv-backend") == "c10d"
    assert int(flag(command, "--nnodes")) == spec["completions"] == spec["parallelism"]
    assert command[command.index("--no-python") + 1 :] == [
        "star-train",
        "--config",
        "/etc/star/recipe/recipe.yaml",
    ]
    recipe = yaml.safe_load((MULTINODE / "recipe.yaml").read_text())
    assert recipe["sharding"] == "fsdp" and recipe["finetune"] == "full"
    assert recipe["reference"] == "precomputed"  # a sharded dss run keeps no second model
    spec_volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
    assert "persistentVolumeClaim" in spec_volumes["work"]  # every process writes its shards there


def test_two_nodes_through_the_manifests_launcher_equal_one_process(
    tmp_path: Path, tiny_guard_dir: Path
) -> None:
    star_train = shutil.which("star-train")
    assert star_train, "star-train is not on PATH (pip install -e .)"
    _, command = manifest()
    nnodes = int(flag(command, "--nnodes"))
    work = save_tiny_run(tmp_path, examples=8)
    test_keys = {
        "model": str(work / "trainee"),
        "data": str(work / "data.jsonl"),
        "scorer": "null",
        "max_length": 256,
        "epochs": 1,
        "batch_size": 1,
        "grad_accum": 2,
        "lr": 1e-3,
        "min_lr": 1e-5,
        "warmup_ratio": 0.2,
        "mixed_precision": "no",
        "progress": "false",
        "torch_threads": 1,
        "cache_path": "",
    }
    recipe = MULTINODE / "recipe.yaml"
    scoring = {**test_keys, "scorer": f"local:{tiny_guard_dir}", "output_dir": work / "scoring"}
    sets = [a for k, v in scoring.items() for a in ("--set", f"{k}={v}")]
    out = ["--out", str(work / "scores.jsonl")]
    assert precompute_main(["--config", str(recipe), *sets, *out]) == 0  # the guard's scores, offline
    overrides = [*(f"{k}={v}" for k, v in test_keys.items()), f"scores_file={work / 'scores.jsonl'}"]

    port = free_port()
    launch = [sys.executable, "-m", "torch.distributed.run"]
    for arg in command[1 : command.index("--no-python")]:
        if arg.startswith("--nproc-per-node="):
            arg = "--nproc-per-node=1"
        elif arg.startswith("--rdzv-endpoint="):
            arg = f"--rdzv-endpoint=127.0.0.1:{port}"
        launch.append(arg)
    sets = [a for o in [*overrides, f"output_dir={work / 'two-nodes'}"] for a in ("--set", o)]  # fmt: skip
    launch += ["--no-python", star_train, "--config", str(recipe), *sets]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    nodes = [
        subprocess.Popen(
            launch, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(nnodes)
    ]
    logs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [n.returncode for n in nodes] == [0] * nnodes, "\n".join(log[-3000:] for log in logs)

    one = load_config(
        str(recipe),
        [*overrides, "sharding=none", "grad_accum=4", f"output_dir={work / 'one'}"],
    )
    run_training(one)
    two_losses = _losses(work / "two-nodes")
    one_losses = _losses(work / "one")
    assert len(two_losses) == len(one_losses) == 2
    assert max(abs(a - b) for a, b in zip(two_losses, one_losses, strict=True)) <= 1e-5
    sharded = load_file(str(work / "two-nodes" / "final" / "model.safetensors"))
    single = load_file(str(work / "one" / "final" / "model.safetensors"))
    assert sharded.keys() == single.keys()
    assert max(float((sharded[k] - single[k]).abs().max()) for k in single) <= 1e-5
    start = load_file(str(work / "trainee" / "model.safetensors"))
    assert any(not torch.equal(start[k], single[k]) for k in single)  # it trained


def _losses(out: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines()]
