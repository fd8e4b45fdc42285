"""StarDSSTrainer under FSDP2 through accelerate on CPU: two real processes (gloo, under torch's elastic
launcher as torchrun runs them, the ranks forked: star_testing.fork_ranks) against one process with the
same global batch, for full finetuning and LoRA, dss and sft; and the refusals.

The global batch, as in tests/test_train_sharded.py: 2 processes x batch 1 x gradient accumulation 2
against 1 process x batch 1 x accumulation 4. accelerate deals the micro-batches round-robin to the
processes, so both runs train step s on the same four examples, one per micro-batch. dss reads an
offline scores file, so both runs get the very same scores.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("trl")

from datasets import Dataset
from safetensors.torch import load_file
from trl import SFTConfig

from star_testing import fork_server
from star_testing.scorer_process import free_port
from star_testing.tiny_chat import save_tiny_run
from trainer_client.integrations.trl import StarDSSConfig, StarDSSTrainer
from trainer_client.scoring.precompute import main as precompute_main

ROOT = Path(__file__).resolve().parents[1]
COMBOS = [("full", "dss"), ("lora", "dss"), ("full", "sft"), ("lora", "sft")]
TOLERANCE = 1e-5

_DRIVER = """
import json, sys
import torch
from accelerate.state import AcceleratorState
from tests.test_trl_sharded import trainer
from trainer_client.process_group import leave_process_group, release_trainer
for run in json.loads(open(sys.argv[1]).read()):
    AcceleratorState._reset_state()  # each run its own plugin and precision (the process group stays)
    tr = trainer(run["work"], run["out"], run["finetune"], run["method"], 2, fsdp=True, bf16=run["bf16"],
                 **run.get("extra", {}))
    seen = []
    fetch = tr._star.batch
    tr._star.batch = lambda idx: (seen.append(list(idx)), fetch(idx))[1]
    tr.train(resume_from_checkpoint=run.get("resume"))
    tr.save_model(run["out"])
    p = dict(tr.model.named_parameters())
    sharded = {n: [list(t.to_local().shape), list(t.shape)] for n, t in p.items() if hasattr(t, "to_local")}
    got = dict(rows=tr.star_rows, seen=seen, out_of_order=tr._star.out_of_order, sharded=sharded,
               fsdp=tr.is_fsdp_enabled, dtypes=sorted({str(t.dtype) for t in p.values()}),
               ref={i: a.tolist() for i, a in (tr._star.ref_lp or {}).items()})
    rank = tr.args.process_index
    open(f"{run['out']}/rank{rank}.json", "w").write(json.dumps(got))
release_trainer(tr)  # then nothing keeps the group alive: gloo may abort at exit (pytorch#190489)
del tr
leave_process_group()
"""


def trainer(
    work: str,
    out: str,
    finetune: str,
    method: str,
    grad_accum: int,
    fsdp: bool = False,
    bf16: bool = False,
    **extra: Any,
) -> StarDSSTrainer:
    """The run of one combination: star-train's schedule and AdamW, batch 1, 2 epochs over 8 examples
    (`extra`: SFTConfig arguments over these)."""
    rows = [json.loads(x) for x in (Path(work) / "data.jsonl").read_text().splitlines()]
    sharded: dict[str, Any] = {"fsdp": True, "fsdp_config": {"version": 2}} if fsdp else {}
    opts: dict[str, Any] = dict(save_strategy="no") | sharded | extra
    args = SFTConfig(
        output_dir=out,
        per_device_train_batch_size=1,
        gradient_accumulation_steps=grad_accum,
        num_train_epochs=2,
        learning_rate=1e-3,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr": 1e-5},
        adam_beta2=0.95,
        optim="adamw_torch",
        seed=0,
        bf16=bf16,
        use_cpu=True,
        report_to=[],
        disable_tqdm=True,
        **opts,
    )
    star = StarDSSConfig(method="sft", cache_path="")
    if method == "dss":
        reference = "precomputed" if finetune == "full" else "auto"
        star = StarDSSConfig(scores_file=str(Path(work) / "scores.jsonl"), reference=reference, cache_path="")
    peft = None
    if finetune == "lora":
        from peft import LoraConfig

        peft = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    ds = Dataset.from_dict({k: [r[k] for r in rows] for k in ("prompt", "response")})
    model = str(Path(work) / "trainee")
    return StarDSSTrainer(model, args=args, train_dataset=ds, star=star, peft_config=peft)


SAVE_EVERY_STEP = {"save_strategy": "steps", "save_steps": 1}
SHARDED_SD = {"fsdp_config": {"version": 2, "state_dict_type": "SHARDED_STATE_DICT"}}
RESUMED = {  # the runs resumed from their step-1 checkpoint: (finetune, method, SFTConfig arguments)
    "full-dss": ("full", "dss", {}),
    "lora-dss": ("lora", "dss", {}),
    "sharded": ("full", "dss", SHARDED_SD),
}


def _runs(work: Path) -> list[dict[str, Any]]:
    runs = [dict(finetune=f, method=m, bf16=False, out=str(work / f"two-{f}-{m}")) for f, m in COMBOS]
    runs.append(dict(finetune="full", method="dss", bf16=True, out=str(work / "two-bf16")))
    runs.append(
        dict(finetune="full", method="dss", bf16=False, out=str(work / "two-sharded"), extra=SHARDED_SD)
    )
    for r in runs:  # the checkpoints the resumed runs start from
        if Path(r["out"]).name.removeprefix("two-") in RESUMED:
            r["extra"] = r.get("extra", {}) | SAVE_EVERY_STEP
    return [r | {"work": str(work)} for r in runs]


def _launch(work: Path, name: str, runs: list[dict[str, Any]]) -> None:
    """One launch of two processes running `runs` in turn, under torch's elastic launcher as torchrun
    runs them, the ranks forked from a process that imported torch, transformers and TRL once
    (star_testing.fork_ranks)."""
    (work / f"{name}.json").write_text(json.dumps(runs))
    cmd = [sys.executable, "-m", "star_testing.fork_ranks", "--nproc", "2", "--master-port", str(free_port())]
    cmd += [
        "--preload",
        "trainer_client.integrations.trl",
        str(work / "driver.py"),
        str(work / f"{name}.json"),
    ]
    done = fork_server.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory, tiny_guard_dir: Path) -> Path:
    """Tiny trainee, 8 conversations, their STAR scores from the tiny guard, and every sharded run in
    one launch of two processes (torch, transformers and TRL imported once)."""
    work = save_tiny_run(tmp_path_factory.mktemp("trl-sharded"), examples=8)
    recipe = dict(
        model=str(work / "trainee"),
        data=str(work / "data.jsonl"),
        output_dir=str(work / "scoring"),
        scorer=f"local:{tiny_guard_dir}",
        cache_path="",
        progress=False,
    )
    (work / "score.json").write_text(json.dumps(recipe))
    assert precompute_main(["--config", str(work / "score.json"), "--out", str(work / "scores.jsonl")]) == 0
    (work / "driver.py").write_text(_DRIVER)
    _launch(work, "runs", _runs(work))
    return work


@pytest.fixture(scope="module")
def resumed(work: Path) -> Path:
    """A second launch, as after a stop: each of RESUMED from its run's checkpoint-1 to the end."""
    runs = []
    for name, (finetune, method, extra) in RESUMED.items():
        ckpt = str(work / f"two-{name}" / "checkpoint-1")
        extra = extra | (
            {"save_strategy": "steps", "save_steps": 4} if extra else {}
        )  # sharded: no save_model
        out = str(work / f"resumed-{name}")
        runs.append(dict(finetune=finetune, method=method, bf16=False, out=out, extra=extra, resume=ckpt))
    _launch(work, "resumed", [r | {"work": str(work)} for r in runs])
    return work


def _ranks(out: Path) -> list[dict[str, Any]]:
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def _global_losses(ranks: list[dict[str, Any]]) -> list[float]:
    """Each step's loss over both processes' micro-batches (each row is its process's, weighted by label
    tokens, as star-train's row of a step)."""
    steps = zip(*(r["rows"] for r in ranks), strict=True)
    return [sum(r["loss"] * r["label_tokens"] for r in s) / sum(r["label_tokens"] for r in s) for s in steps]


def _final(out: Path, lora: bool) -> dict[str, torch.Tensor]:
    if (out / "checkpoint-4" / "pytorch_model_fsdp_0").is_dir():  # SHARDED_STATE_DICT: a DCP directory
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        dcp_to_torch_save(out / "checkpoint-4" / "pytorch_model_fsdp_0", out / "final.pt")
        return dict(torch.load(out / "final.pt", weights_only=True)["model"])
    return load_file(str(out / ("adapter_model.safetensors" if lora else "model.safetensors")))


@pytest.mark.slow
@pytest.mark.parametrize(("finetune", "method"), COMBOS)
def test_two_fsdp_processes_equal_one_with_the_same_global_batch(
    work: Path, finetune: str, method: str
) -> None:
    one_out = work / f"one-{finetune}-{method}"
    one = trainer(str(work), str(one_out), finetune, method, 4)
    one.train()
    one.save_model(str(one_out))
    two = work / f"two-{finetune}-{method}"
    ranks = _ranks(two)
    a, b = [r["loss"] for r in one.star_rows], _global_losses(ranks)
    assert len(a) == len(b) == 4
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < TOLERANCE, (a, b)
    lora = finetune == "lora"
    wa, wb = _final(one_out, lora), _final(two, lora)
    assert wa.keys() == wb.keys() and len(wa) > 0
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < TOLERANCE
    if lora:  # trained, so equal weights mean something
        assert all(bool(wb[k].any()) for k in wb if ".lora_B." in k)
    # really sharded: every parameter a DTensor, each process holding half of the rows
    for r in ranks:
        assert r["fsdp"] and r["sharded"] and r["dtypes"] == ["torch.float32"]
        assert all(local[0] * 2 == full[0] for local, full in r["sharded"].values())
    # each process fetched the scores of its own shard, in the predicted order; none fetched twice
    assert [r["out_of_order"] for r in ranks] == [0, 0]
    seen = [i for r in ranks for b in r["seen"] for i in b]
    assert sorted(seen) == sorted(list(range(8)) * 2)  # 2 epochs, each example once an epoch
    if method == "dss":  # the precomputed or adapter-off reference: step 1 starts at the reference
        assert all(r["rows"][0]["kl"] == 0.0 for r in ranks)


@pytest.mark.slow
def test_bf16_compute_keeps_float32_masters(work: Path) -> None:
    """bf16: FSDP2 gathers and runs the blocks in bf16 (the losses move off the float32 run's); the
    sharded masters and the saved model stay float32; the reference was precomputed under the same
    compute, so step 1's KL is zero."""
    bf16, fp32 = _ranks(work / "two-bf16"), _ranks(work / "two-full-dss")
    a, b = _global_losses(bf16), _global_losses(fp32)
    assert 0 < max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-2
    assert all(r["rows"][0]["kl"] == 0.0 and r["dtypes"] == ["torch.float32"] for r in bf16)
    assert {t.dtype for t in _final(work / "two-bf16", lora=False).values()} == {torch.float32}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RESUMED))
def test_resumed_run_equals_the_uninterrupted_one(resumed: Path, name: str) -> None:
    """Stopped after step 1 (mid-epoch) and resumed in a new launch: steps 2-4 and the final weights as
    the uninterrupted run's; the precomputed reference is the starting weights' (computed before the
    checkpoint is loaded), and the scores are prefetched from the resume point, in order."""
    whole, again = _ranks(resumed / f"two-{name}"), _ranks(resumed / f"resumed-{name}")
    a, b = _global_losses(whole)[1:], _global_losses(again)
    assert [r["step"] for r in again[0]["rows"]] == [2, 3, 4]
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < TOLERANCE, (a, b)
    lora = RESUMED[name][0] == "lora"
    wa, wb = _final(resumed / f"two-{name}", lora), _final(resumed / f"resumed-{name}", lora)
    assert wa.keys() == wb.keys() and len(wa) > 0
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < TOLERANCE
    for w, r in zip(whole, again, strict=True):
        assert r["ref"] == w["ref"] and bool(r["ref"]) == (not lora)
        assert r["out_of_order"] == 0 and r["seen"] == w["seen"][2:]


@pytest.mark.parametrize(
    ("env", "star", "words"),
    [
        ({"FSDP_VERSION": "1"}, {"method": "sft"}, "FSDP2 only, not FSDP1"),
        ({}, {"reference": "auto"}, "reference='precomputed'"),
    ],
)
def test_refusals_are_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], star: dict[str, Any], words: str
) -> None:
    """What `accelerate launch` with an FSDP config asks (its environment), refused before any work."""
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    for k, v in {"FSDP_VERSION": "2", **env}.items():
        monkeypatch.setenv(k, v)
    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    ds = Dataset.from_dict({"prompt": ["hi"], "response": ["hello"]})
    cfg = StarDSSConfig(scores_file=str(tmp_path / "s.jsonl"), **star)
    with pytest.raises(ValueError, match=words) as e:
        StarDSSTrainer("never-loaded", args=args, train_dataset=ds, star=cfg)
    assert "\n" not in str(e.value)
