"""`sharding: fsdp` on CPU: two real processes (gloo; torch's elastic launcher with forked ranks, and
torchrun for the documented resume command) against one process with the same global batch, for full
finetuning and LoRA, dss and sft; resume from a sharded checkpoint; the refusals.

The global batch: 2 processes x batch_size 1 x grad_accum 2 against 1 process x batch_size 1 x
grad_accum 4. The sampler deals an epoch's permutation round-robin over the processes, so both runs
train step s on examples 4s..4s+3 of the same permutation, each micro-batch one example (with larger
micro-batches the two runs would group the examples differently, and the loss is a mean per
micro-batch). dss reads an offline scores file, so both runs get the very same scores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from star_testing import fork_server
from star_testing.scorer_process import free_port
from star_testing.tiny_chat import save_tiny_run
from trainer_client.scoring.precompute import main as precompute_main
from trainer_client.train import run_training
from trainer_client.train.checkpoint import checkpoint_state
from trainer_client.train.cli import main as cli_main
from trainer_client.train.config import build_config

ROOT = Path(__file__).resolve().parents[1]
COMBOS = [("full", "dss"), ("lora", "dss"), ("full", "sft"), ("lora", "sft")]
TOLERANCE = 1e-5

_DRIVER = """
import json, sys
from trainer_client.process_group import leave_process_group
from trainer_client.train.cli import main
codes = [main(argv) for argv in json.loads(open(sys.argv[1]).read())]
leave_process_group()
sys.exit(max(codes))
"""


def _recipe(work: Path, finetune: str, method: str) -> dict[str, Any]:
    r: dict[str, Any] = dict(
        model=str(work / "trainee"),
        data=str(work / "data.jsonl"),
        batch_size=1,
        lr=1e-3,
        min_lr=1e-5,
        warmup_ratio=0.2,
        epochs=2,
        lora_r=4,
        lora_alpha=8,
        finetune=finetune,
        method=method,
        progress=False,
        torch_threads=1,
        cache_path="",
    )
    if method == "dss":
        r.update(
            scores_file=str(work / "scores.jsonl"), reference="precomputed" if finetune == "full" else "auto"
        )
    return r


def _argv(recipe: dict[str, Any], **kw: Any) -> list[str]:
    return [a for k, v in {**recipe, **kw}.items() for a in ("--set", f"{k}={v}")]


def _forked_ranks(args: list[str], timeout: int = 240) -> subprocess.CompletedProcess[str]:
    """Two processes under torch's elastic launcher as torchrun runs them, the ranks forked from one
    that imported torch and transformers once (star_testing.fork_ranks)."""
    cmd = [sys.executable, "-m", "star_testing.fork_ranks", "--nproc", "2"]
    cmd += ["--master-port", str(free_port()), "--preload", "trainer_client.train.cli", *args]
    return fork_server.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=ROOT, timeout=timeout)


def _torchrun(args: list[str], timeout: int = 240) -> subprocess.CompletedProcess[str]:
    """torchrun itself, two fresh interpreters: for the documented commands."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    cmd += ["--master_port", str(free_port()), *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory, tiny_guard_dir: Path) -> Path:
    """Tiny trainee, 8 conversations, their STAR scores from the tiny guard, and the sharded runs: every
    combination, plus one stopped after 3 of its 4 steps, in one launch of two forked processes; then
    the stopped run resumed by the documented command under torchrun, a second launch."""
    work = save_tiny_run(tmp_path_factory.mktemp("sharded"), examples=8)
    recipe = _recipe(work, "full", "dss") | {"scorer": f"local:{tiny_guard_dir}", "scores_file": None}
    recipe_file = work / "score.json"
    recipe_file.write_text(json.dumps(recipe | {"output_dir": str(work / "scoring")}))
    assert precompute_main(["--config", str(recipe_file), "--out", str(work / "scores.jsonl")]) == 0
    runs = [
        _argv(_recipe(work, f, m), sharding="fsdp", grad_accum=2, output_dir=work / f"two-{f}-{m}")
        for f, m in COMBOS
    ]
    stopped = _argv(_recipe(work, "full", "dss"), sharding="fsdp", grad_accum=2, output_dir=work / "resumed")
    runs.append([*stopped, "--set", "save_every=2", "--set", "stop_after_steps=3"])
    bf16 = _recipe(work, "full", "dss") | {"mixed_precision": "bf16"}
    runs.append(_argv(bf16, sharding="fsdp", grad_accum=2, output_dir=work / "two-bf16"))
    (work / "runs.json").write_text(json.dumps(runs))
    (work / "driver.py").write_text(_DRIVER)
    done = _forked_ranks([str(work / "driver.py"), str(work / "runs.json")])
    assert done.returncode == 0, done.stderr[-4000:]
    resume = ["-m", "trainer_client.train.cli", *stopped, "--set", "save_every=2", "--resume"]
    done = _torchrun(resume)
    assert done.returncode == 0, done.stderr[-4000:]
    return work


def _losses(out: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines()]


def _final(out: Path, lora: bool) -> dict[str, torch.Tensor]:
    return load_file(str(out / "final" / ("adapter_model.safetensors" if lora else "model.safetensors")))


@pytest.mark.parametrize(("finetune", "method"), COMBOS)
def test_two_sharded_processes_equal_one_with_the_same_global_batch(
    work: Path, finetune: str, method: str
) -> None:
    one = run_training(
        build_config(
            _recipe(work, finetune, method)
            | {"grad_accum": 4, "output_dir": str(work / f"one-{finetune}-{method}")}
        )
    )
    two = work / f"two-{finetune}-{method}"
    a, b = _losses(Path(one.output_dir)), _losses(two)
    assert len(a) == len(b) == 4
    diff = max(abs(x - y) for x, y in zip(a, b, strict=True))
    assert diff < TOLERANCE, (a, b)
    lora = finetune == "lora"
    wa, wb = _final(Path(one.output_dir), lora), _final(two, lora)
    assert wa.keys() == wb.keys() and len(wa) > 0
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < TOLERANCE
    # the weights trained (equal untrained weights prove nothing), in float32 masters
    if lora:
        assert all(bool(wb[k].any()) for k in wb if ".lora_B." in k)
    else:
        start = load_file(str(work / "trainee" / "model.safetensors"))
        assert any(not torch.equal(wb[k], start[k]) for k in wb)
    assert {t.dtype for t in wb.values()} == {torch.float32}
    if method == "dss":  # the precomputed or adapter-off reference: step 1 starts at the reference
        first = json.loads((two / "metrics.jsonl").read_text().splitlines()[0])
        assert first["kl"] == 0.0 and 0.0 < first["mean_star"] < 1.0


def test_the_final_directory_is_an_ordinary_model(work: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(work / "two-full-sft" / "final"))
    saved = _final(work / "two-full-sft", lora=False)
    assert all(torch.equal(p.detach(), saved[n]) for n, p in model.named_parameters())
    assert (work / "two-full-sft" / "final" / "tokenizer_config.json").is_file()


def test_resume_from_a_sharded_checkpoint_equals_the_uninterrupted_run(work: Path) -> None:
    whole, resumed = work / "two-full-dss", work / "resumed"
    ckpts = sorted(p.name for p in (resumed / "checkpoints").iterdir())
    assert ckpts == ["step-00000002", "step-00000003", "step-00000004"]
    assert (resumed / "checkpoints" / "step-00000003" / "sharded" / ".metadata").is_file()
    assert [json.loads(x)["step"] for x in (resumed / "metrics.jsonl").read_text().splitlines()] == [
        1,
        2,
        3,
        4,
    ]
    assert _losses(resumed) == _losses(whole)
    a, b = _final(whole, False), _final(resumed, False)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_refusals_are_one_line(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    full_dss = _recipe(work, "full", "dss")
    with pytest.raises(ValueError, match="reference: precomputed"):
        build_config(full_dss | {"sharding": "fsdp", "reference": "auto", "output_dir": str(work / "x")})
    with pytest.raises(ValueError, match="mixed_precision: bf16"):
        build_config(
            full_dss | {"sharding": "fsdp", "mixed_precision": "fp16", "output_dir": str(work / "x")}
        )
    with pytest.raises(ValueError, match="sharding must be one of"):
        build_config(full_dss | {"sharding": "zero3", "output_dir": str(work / "x")})
    ckpt = work / "resumed" / "checkpoints" / "step-00000003"
    with pytest.raises(ValueError, match="saved by 2 processes; resume it with as many, not 4"):
        checkpoint_state(ckpt, "fsdp", 4)
    assert checkpoint_state(ckpt, "fsdp", 2)["step"] == 3
    # one process cannot shard; a sharded checkpoint cannot be resumed unsharded
    for extra in (["--set", "sharding=fsdp"], ["--resume"]):
        argv = _argv(full_dss, output_dir=work / ("one-proc" if extra[0] == "--set" else "resumed"))
        assert cli_main([*argv, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("star-train: error: "), err
        assert (
            "torchrun" if extra[0] == "--set" else "with sharding: fsdp; resume it with sharding: fsdp"
        ) in err[0]


def test_bf16_compute_keeps_float32_masters(work: Path) -> None:
    """mixed_precision bf16: the blocks are gathered and run in bf16 (the losses move off the float32
    run's), the sharded masters and the saved model stay float32, and the reference precomputed under
    the same compute makes step 1's KL zero."""
    bf16, fp32 = work / "two-bf16", work / "two-full-dss"
    a, b = _losses(bf16), _losses(fp32)
    assert 0 < max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-2
    assert json.loads((bf16 / "metrics.jsonl").read_text().splitlines()[0])["kl"] == 0.0
    assert {t.dtype for t in _final(bf16, lora=False).values()} == {torch.float32}


def test_star_train_leaves_its_process_group(tmp_path: Path) -> None:
    """The `star-train` command destroys the process group a launcher made it join once it has succeeded
    (after collecting the garbage that still holds the group: the trained model's reference cycles):
    a gloo process exiting with its group alive can abort at exit (pytorch#190489), and torchrun then
    fails a finished run (seen in CI: "terminate called without an active exception"). A failed run
    leaves the group alone (its peers may be inside a collective; torchrun ends them)."""
    import torch.distributed as dist

    from trainer_client.train.cli import entry

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    assert entry(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert dist.is_initialized()
    assert entry(["--plan", "--set", "model=llama-3.2-1b"]) == 0  # a success that loads no model
    assert not dist.is_initialized()
