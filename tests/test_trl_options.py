"""StarDSSTrainer with TRL's options: column removal, assistant_only_loss, refusals, batch order, and
a run against a real scorer process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("trl")

from datasets import Dataset
from trl import SFTConfig

from star_testing.tiny_chat import save_tiny_run
from trainer_client.data import build_examples
from trainer_client.integrations.trl import STAR_INDEX, StarDSSConfig, StarDSSTrainer
from trainer_client.integrations.trl.dataset import conversations
from trainer_client.scoring.select import scorer_from
from trainer_client.train.star_batches import StarBatches


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_run(tmp_path_factory.mktemp("trl-opts"), examples=6)


def _rows(workdir: Path) -> list[dict[str, str]]:
    return [json.loads(x) for x in (workdir / "data.jsonl").read_text().splitlines()]


def _args(out: Path, **kw: Any) -> SFTConfig:
    base: dict[str, Any] = dict(
        output_dir=str(out), per_device_train_batch_size=2, max_steps=1, report_to=[], use_cpu=True, seed=0
    )
    return SFTConfig(**{**base, **kw, "disable_tqdm": True, "save_strategy": "no"})


def _trainer(workdir: Path, ds: Dataset, **kw: Any) -> StarDSSTrainer:
    star = kw.pop("star", StarDSSConfig(method="sft"))
    return StarDSSTrainer(
        str(workdir / "trainee"), args=_args(workdir / "out", **kw), train_dataset=ds, star=star
    )


def test_star_index_survives_column_removal_by_design(workdir: Path) -> None:
    rows = _rows(workdir)
    ds = Dataset.from_dict(
        {"prompt": [r["prompt"] for r in rows], "response": [r["response"] for r in rows], "junk": [1] * 6}
    )
    tr = _trainer(workdir, ds, remove_unused_columns=True)
    batch = next(iter(tr.get_train_dataloader()))
    assert STAR_INDEX in batch and "junk" not in batch
    assert sorted(batch) == ["attention_mask", "input_ids", "labels", STAR_INDEX]
    tr.model.train()
    del batch[STAR_INDEX]
    with pytest.raises(RuntimeError, match=STAR_INDEX):  # never silently trained without its weights
        tr.compute_loss(tr.model, batch)


def test_assistant_only_loss_labels_every_assistant_turn(workdir: Path) -> None:
    msgs = [
        [
            {"role": "user", "content": f"hi {i}"},
            {"role": "assistant", "content": "Hello there, friend."},
            {"role": "user", "content": "and now?"},
            {"role": "assistant", "content": "Now we mix the flour."},
        ]
        for i in range(4)
    ]
    ds = Dataset.from_dict({"messages": msgs})
    last = _trainer(workdir, ds)
    every = _trainer(workdir, ds, assistant_only_loss=True)
    n_last = sum(t != -100 for row in last.train_dataset["labels"] for t in row)
    n_every = sum(t != -100 for row in every.train_dataset["labels"] for t in row)
    expected = build_examples(every.processing_class, conversations(ds), all_turns=True)
    assert n_every == sum(sum(e.label_mask) for e in expected) > n_last


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"packing": True}, "packing"),
        ({"completion_only_loss": False}, "completion_only_loss"),
        ({"pad_to_multiple_of": 8}, "pad_to_multiple_of"),
        ({"padding_free": True}, "padding_free"),
        ({"truncation_mode": "keep_end"}, "keep_start"),
        ({"data_collator": object()}, "collator"),
    ],
)
def test_refuses_options_it_cannot_honour(workdir: Path, kw: dict[str, Any], words: str) -> None:
    rows = _rows(workdir)
    ds = Dataset.from_dict({"prompt": [r["prompt"] for r in rows], "response": [r["response"] for r in rows]})
    collator = kw.pop("data_collator", None)
    with pytest.raises(ValueError, match=words):
        StarDSSTrainer(
            str(workdir / "trainee"),
            args=_args(workdir / "out", **kw),
            data_collator=collator,
            train_dataset=ds,
            star=StarDSSConfig(method="sft"),
        )


def test_eval_loss_is_the_plain_ce_over_label_tokens(workdir: Path) -> None:
    import torch

    from trainer_client.loss import sft_loss, shift_for_causal_lm

    rows = _rows(workdir)
    ds = Dataset.from_dict({"prompt": [r["prompt"] for r in rows], "response": [r["response"] for r in rows]})
    tr = StarDSSTrainer(
        str(workdir / "trainee"),
        args=_args(workdir / "eval", per_device_eval_batch_size=6, bf16=False),
        train_dataset=ds,
        eval_dataset=ds,
        star=StarDSSConfig(method="sft"),
    )
    assert tr.eval_dataset["labels"] == tr.train_dataset["labels"]  # star-train's labels, no star_index
    got = tr.evaluate()["eval_loss"]
    b = next(iter(tr.get_eval_dataloader()))
    with torch.no_grad():
        logits = tr.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    lg, tg, mask = shift_for_causal_lm(logits, b["input_ids"], b["labels"] != -100)
    assert abs(got - float(sft_loss(lg, tg, mask).loss)) < 1e-5


def test_refuses_plain_text_and_a_missing_scorer(workdir: Path) -> None:
    ds = Dataset.from_dict({"prompt": ["a"], "completion": ["b"]})
    with pytest.raises(ValueError, match="conversational"):
        _trainer(workdir, ds)
    with pytest.raises(ValueError, match="needs scores"):
        StarDSSConfig(method="dss")


def test_out_of_order_batches_are_fetched_when_they_come(workdir: Path, tiny_guard_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(workdir / "trainee"))
    rows = _rows(workdir)
    exs = build_examples(tok, conversations(rows))
    make = scorer_from(None, f"local:{tiny_guard_dir}", "llama-guard-3")
    sb = StarBatches(exs, 0, "dss", make, None, depth=2)
    try:
        sb.start([[0, 1], [2, 3]])
        in_order, _ = sb.scores([0, 1])
        assert sb.out_of_order == 0
        swapped, _ = sb.scores([5, 4])
        assert sb.out_of_order == 1
        direct, _ = sb.scores([0, 1])  # the queue is spent: fetched now, the same scores
        assert direct == in_order and len(swapped) == 2
    finally:
        sb.close()
    with pytest.raises(RuntimeError, match="closed"):
        sb.scores([0])
    strict = StarBatches(exs, 0, "dss", make, None, depth=2, in_order=True)  # star-train's
    try:
        strict.start([[0, 1], [2, 3]])
        with pytest.raises(RuntimeError, match=r"batch \[0, 1\] came when batch \[2, 3\] was asked for"):
            strict.scores([2, 3])
    finally:
        strict.close()


@pytest.mark.slow
def test_dss_against_a_real_scorer_process(workdir: Path, default_server: Any) -> None:
    from trainer_client.train import run_training
    from trainer_client.train.config import build_config

    server = default_server
    cfg = build_config(
        dict(
            model=str(workdir / "trainee"),
            data=str(workdir / "data.jsonl"),
            output_dir=str(workdir / "st-real"),
            batch_size=2,
            lr=1e-3,
            min_lr=1e-5,
            warmup_ratio=0.0,
            finetune="full",
            progress=False,
            method="dss",
            scorer=server.address,
        )
    )
    run_training(cfg)
    star_rows = [json.loads(x) for x in (workdir / "st-real" / "metrics.jsonl").read_text().splitlines()]
    rows = _rows(workdir)
    ds = Dataset.from_dict({"prompt": [r["prompt"] for r in rows], "response": [r["response"] for r in rows]})
    star = StarDSSConfig(scorer=server.address, cache_path=str(workdir / "trl-real.sqlite"))
    args = _args(
        workdir / "trl-real",
        max_steps=-1,
        num_train_epochs=1,
        learning_rate=1e-3,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr": 1e-5},
        adam_beta2=0.95,
        optim="adamw_torch",
        bf16=False,
    )
    tr = StarDSSTrainer(str(workdir / "trainee"), args=args, train_dataset=ds, star=star)
    tr.train()
    assert tr.star_guard_requests == 6  # a cold cache: every conversation scored once by the server
    ours, theirs = [r["loss"] for r in tr.star_rows], [r["loss"] for r in star_rows]
    assert len(ours) == len(theirs) == 3
    # scores may differ in the last float bits with the server's batch composition (seen: 4.8e-7)
    assert max(abs(a - b) for a, b in zip(ours, theirs, strict=True)) < 1e-5, (ours, theirs)


def test_example_script_help_and_a_lora_step(workdir: Path, tiny_guard_dir: Path) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    script = root / "examples" / "trl_star_dss.py"
    helped = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, cwd=root)
    assert helped.returncode == 0 and "--scorer" in helped.stdout
    import runpy

    main = runpy.run_path(str(script))["main"]
    out = workdir / "example-run"
    argv = ["--model", str(workdir / "trainee"), "--data", str(workdir / "data.jsonl")]
    argv += ["--scorer", f"local:{tiny_guard_dir}", "--output-dir", str(out), "--lora", "--max-steps", "2"]
    assert main([*argv, "--cpu", "--no-bf16", "--lr", "1e-3"]) == 0
    assert (out / "adapter_model.safetensors").is_file()


_TWO_RANKS = """
import json, sys
from datasets import Dataset
from trl import SFTConfig
from trainer_client.integrations.trl import StarDSSConfig, StarDSSTrainer
from trainer_client.process_group import leave_process_group, release_trainer
rows = [json.loads(x) for x in open(sys.argv[1])]
ds = Dataset.from_dict({k: [r[k] for r in rows] for k in ("prompt", "response")})
args = SFTConfig(output_dir=sys.argv[3], per_device_train_batch_size=2, num_train_epochs=2, bf16=False,
                 use_cpu=True, report_to=[], save_strategy="no", disable_tqdm=True, seed=0)
star = StarDSSConfig(scorer=sys.argv[4], cache_path="")
tr = StarDSSTrainer(sys.argv[2], args=args, train_dataset=ds, star=star)
tr.train()
got = [args.world_size, tr._star.out_of_order, len(tr.star_rows)]
open(f"{sys.argv[3]}/rank{args.process_index}.json", "w").write(json.dumps(got))
release_trainer(tr)  # then nothing keeps the group alive: gloo may abort at exit (pytorch#190489)
del tr
leave_process_group()
"""


@pytest.mark.slow
def test_two_processes_prefetch_their_own_shards_in_order(workdir: Path, tiny_guard_dir: Path) -> None:
    """Two CPU processes (gloo) under torch's elastic launcher, as torchrun runs them (forked ranks:
    star_testing.fork_ranks): each process's batches come in the predicted order (accelerate's batch
    sharding, the last round completed from the epoch's start)."""
    import os
    import sys

    from star_testing import fork_server
    from star_testing.scorer_process import free_port

    script = workdir / "two_ranks.py"
    script.write_text(_TWO_RANKS)
    root = Path(__file__).resolve().parents[1]
    port = str(free_port())  # not torchrun's fixed default, which another job may hold
    cmd = [sys.executable, "-m", "star_testing.fork_ranks", "--nproc", "2", "--master-port", port]
    cmd += ["--preload", "trainer_client.integrations.trl", str(script)]
    cmd += [
        str(workdir / "data.jsonl"),
        str(workdir / "trainee"),
        str(workdir / "two"),
        f"local:{tiny_guard_dir}",
    ]
    done = fork_server.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=root, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # 6 examples, 2 per batch, 2 ranks: 3 batches an epoch, rank 1's second one completed from the start;
    # per rank: world 2, no batch out of the predicted order, 4 optimizer steps in 2 epochs
    for rank in (0, 1):
        assert json.loads((workdir / "two" / f"rank{rank}.json").read_text()) == [2, 0, 4]
