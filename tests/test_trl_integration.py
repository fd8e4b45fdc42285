"""StarDSSTrainer (TRL) against star-train on tiny models: the same per-step losses and final weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("trl")

from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from star_testing.tiny_chat import save_tiny_run
from trainer_client.integrations.trl import StarDSSConfig, StarDSSTrainer
from trainer_client.train import run_training
from trainer_client.train.config import build_config

TOL = 1e-6
"""Per-step loss and final-weight tolerance (absolute); on CPU the two runs are bit-identical."""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_run(tmp_path_factory.mktemp("trl"), examples=10)


def _dataset(workdir: Path, **extra: list[Any]) -> Dataset:
    rows = [json.loads(x) for x in (workdir / "data.jsonl").read_text().splitlines()]
    return Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": r["prompt"]}] for r in rows],
            "completion": [[{"role": "assistant", "content": r["response"]}] for r in rows],
            **extra,
        }
    )


def _sft_args(out: Path, **kw: Any) -> SFTConfig:
    """TRL settings equal to star-train's (the recipe in `_star_train`)."""
    base: dict[str, Any] = dict(
        output_dir=str(out),
        per_device_train_batch_size=3,
        gradient_accumulation_steps=2,
        num_train_epochs=2,
        learning_rate=1e-3,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr": 1e-5},
        warmup_steps=0,
        adam_beta1=0.9,
        adam_beta2=0.95,
        weight_decay=0.0,
        max_grad_norm=1.0,
        optim="adamw_torch",
        seed=0,
        max_length=2048,
        bf16=False,  # SFTConfig defaults to bf16 autocast; star-train's mixed_precision default is "no"
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    return SFTConfig(**{**base, **kw})


def _star_train(workdir: Path, out: str, **kw: Any) -> tuple[list[float], Path]:
    base: dict[str, Any] = dict(
        model=str(workdir / "trainee"),
        data=str(workdir / "data.jsonl"),
        output_dir=str(workdir / out),
        batch_size=3,
        grad_accum=2,
        epochs=2,
        lr=1e-3,
        min_lr=1e-5,
        warmup_ratio=0.0,
        progress=False,
    )
    cfg = build_config({**base, **kw})
    res = run_training(cfg)
    rows = [json.loads(x) for x in (Path(res.output_dir) / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows], Path(res.final_dir)


def _assert_same(a: list[float], b: list[float], wa: dict[str, torch.Tensor], wb: dict[str, Any]) -> None:
    assert len(a) == len(b) == 4
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) <= TOL, (a, b)
    common = set(wa) & set(wb)
    assert len(common) == len(wa) > 0
    assert max(float((wa[k] - wb[k].detach().cpu()).abs().max()) for k in common) <= TOL


def test_full_dss_equals_star_train(workdir: Path, tiny_guard_dir: Path) -> None:
    cache = str(workdir / "full-cache.sqlite")  # one cache: both runs read the very same scores
    star = dict(method="dss", scorer=f"local:{tiny_guard_dir}", cache_path=cache)
    # grad_accum 3 over 4 micro-batches an epoch: the last step of each epoch has one micro-batch
    losses, final = _star_train(workdir, "st-full", finetune="full", grad_accum=3, **star)
    tr = StarDSSTrainer(
        str(workdir / "trainee"),
        args=_sft_args(workdir / "trl-full", gradient_accumulation_steps=3),
        train_dataset=_dataset(workdir),
        star=StarDSSConfig(**star),
    )
    tr.train()
    assert tr._star.out_of_order == 0  # every batch's scores came from the prefetcher, in order
    assert tr.star_rows[0]["kl"] == 0.0 and tr.star_rows[-1]["kl"] > 0  # the frozen copy is the reference
    _assert_same(
        losses,
        [r["loss"] for r in tr.star_rows],
        load_file(str(final / "model.safetensors")),
        tr.model.state_dict(),
    )


def test_lora_peft_config_disabled_adapter_equals_star_train(workdir: Path, tiny_guard_dir: Path) -> None:
    from peft import LoraConfig, get_peft_model_state_dict

    cache = str(workdir / "lora-cache.sqlite")
    star = dict(method="dss", scorer=f"local:{tiny_guard_dir}", cache_path=cache)
    losses, final = _star_train(workdir, "st-lora", finetune="lora", lora_r=4, lora_alpha=8, **star)
    peft = LoraConfig(
        r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        task_type="CAUSAL_LM",
    )
    tr = StarDSSTrainer(
        str(workdir / "trainee"),
        args=_sft_args(workdir / "trl-lora"),
        train_dataset=_dataset(workdir),
        star=StarDSSConfig(**star),
        peft_config=peft,
    )
    assert tr._reference.frozen is None  # no copy: the reference is the model with its adapter disabled
    tr.train()
    mine = get_peft_model_state_dict(tr.model)
    theirs = load_file(str(final / "adapter_model.safetensors"))
    _assert_same(losses, [r["loss"] for r in tr.star_rows], theirs, mine)


@pytest.mark.parametrize("method", ["sft", "rs"])
def test_sft_and_rs_equal_star_train(workdir: Path, tiny_guard_dir: Path, method: str) -> None:
    star: dict[str, Any] = dict(method=method, cache_path=str(workdir / f"{method}-cache.sqlite"))
    if method == "rs":
        star["scorer"] = f"local:{tiny_guard_dir}"
    losses, final = _star_train(workdir, f"st-{method}", finetune="full", **star)
    tr = StarDSSTrainer(
        str(workdir / "trainee"),
        args=_sft_args(workdir / f"trl-{method}"),
        train_dataset=_dataset(workdir),
        star=StarDSSConfig(**star),
    )
    tr.train()
    assert tr._reference.frozen is None  # sft and rs have no KL term
    wa = load_file(str(final / "model.safetensors"))
    _assert_same(losses, [r["loss"] for r in tr.star_rows], wa, tr.model.state_dict())


def test_bf16_precomputed_reference_equals_star_train(workdir: Path, tiny_guard_dir: Path) -> None:
    star = dict(
        method="dss",
        scorer=f"local:{tiny_guard_dir}",
        cache_path=str(workdir / "bf16-cache.sqlite"),
        reference="precomputed",
    )
    losses, final = _star_train(workdir, "st-bf16", finetune="full", mixed_precision="bf16", **star)
    tr = StarDSSTrainer(
        str(workdir / "trainee"),
        args=_sft_args(workdir / "trl-bf16", bf16=True),  # SFTConfig's default
        train_dataset=_dataset(workdir),
        star=StarDSSConfig(**star),
    )
    assert (
        tr._reference.frozen is None and tr._star.ref_lp is not None
    )  # no reference model, cached log-probs
    tr.train()
    assert tr.star_rows[0]["kl"] < 1e-9  # precomputed under the same bf16 autocast as the step
    wa = load_file(str(final / "model.safetensors"))
    _assert_same(losses, [r["loss"] for r in tr.star_rows], wa, tr.model.state_dict())


def test_tokens_and_labels_are_trls_own(workdir: Path) -> None:
    """On prompt-completion data TRL's own SFTTrainer (completion_only_loss) trains on the same tokens
    and labels as StarDSSTrainer, so switching the class does not change what is learned."""
    ds = _dataset(workdir)
    plain = SFTTrainer(str(workdir / "trainee"), args=_sft_args(workdir / "plain"), train_dataset=ds)
    ours = StarDSSTrainer(
        str(workdir / "trainee"),
        args=_sft_args(workdir / "ours"),
        train_dataset=ds,
        star=StarDSSConfig(method="sft"),
    )
    assert plain.train_dataset["input_ids"] == ours.train_dataset["input_ids"]
    assert plain.train_dataset["labels"] == ours.train_dataset["labels"]
