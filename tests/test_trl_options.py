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
from trainer_client.integrations.trl.scores import StarBatches
from trainer_client.scoring.select import scorer_from


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
    ],
)
def test_refuses_options_it_cannot_honour(workdir: Path, kw: dict[str, Any], words: str) -> None:
    rows = _rows(workdir)
    ds = Dataset.from_dict({"prompt": [r["prompt"] for r in rows], "response": [r["response"] for r in rows]})
    with pytest.raises(ValueError, match=words):
        _trainer(workdir, ds, **kw)


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


@pytest.mark.slow
def test_dss_against_a_real_scorer_process(workdir: Path, start_server: Any) -> None:
    from trainer_client.train import run_training
    from trainer_client.train.config import build_config

    server = start_server()
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
