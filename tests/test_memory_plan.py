"""`star-train --plan`: the bytes per GPU against what torch measures, and the published shapes."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from trainer_client.train.cli import main
from trainer_client.train.memory_plan import (
    KNOWN_SHAPES,
    PlanSettings,
    load_model_config,
    model_shape,
    plan_rows,
)

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def measured_peak(
    config: Any, finetune: str, method: str, batch: int, length: int, tmp: Path, ac: bool = False
) -> int:
    """The peak of live CPU tensor bytes over one training step after a warm-up step (weights, AdamW's
    moments, activations, gradients), as torch's memory profiler records it, for a step built from
    star-train's own pieces: the trainee (LoRA adapters from `with_lora`), a frozen reference copy for
    full-finetuning dss, the loss of `compute_loss` with padding in the batch."""
    from transformers import AutoModelForCausalLM

    from trainer_client.loss import compute_loss, shift_for_causal_lm
    from trainer_client.train.config import build_config
    from trainer_client.train.model_setup import enable_activation_checkpointing, with_lora

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    ref = None
    if finetune == "lora":
        cfg = build_config(
            {"model": "m", "output_dir": "o", "data": "d", "method": "sft", "lora_r": 8, "lora_alpha": 16}
        )
        model = with_lora(cfg.trainee, model)
    elif method == "dss":
        ref = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
        ref = ref.eval().requires_grad_(False)
    if ac:
        enable_activation_checkpointing(model)
        model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, config.vocab_size, (batch, length))
    attn = torch.ones_like(ids)
    attn[0, -5:] = 0

    def step() -> None:
        logits = model(input_ids=ids, attention_mask=attn).logits
        ref_logits = None
        if method == "dss":  # the reference: the frozen copy, or LoRA's base with the adapter off
            with torch.no_grad(), model.disable_adapter() if ref is None else contextlib.nullcontext():
                ref_logits = (ref or model)(input_ids=ids, attention_mask=attn).logits[:, :-1]
        lg, targets, mask, weights = shift_for_causal_lm(logits, ids, attn, torch.rand(batch, length))
        out = compute_loss(method, lg, targets, mask, weights=weights, ref_logits=ref_logits)
        del ref_logits
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    from torch.profiler import ProfilerActivity, profile

    with profile(
        activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True
    ) as prof:
        step()
    out = tmp / "timeline.json"
    with pytest.warns(FutureWarning):  # deprecated in favour of a CUDA-only API; the CPU timeline is this
        prof.export_memory_timeline(str(out), device="cpu")
    _, sizes = json.loads(out.read_text())
    return max(sum(row) for row in sizes)


def tiny(vocab: int, hidden: int, layers: int, heads: int, kv_heads: int) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=1024,
    )


@pytest.mark.parametrize(
    ("config", "finetune", "method", "batch", "length", "row", "ac"),
    [
        (tiny(2000, 128, 2, 4, 2), "full", "dss", 4, 256, "single", False),  # logits-heavy
        (tiny(512, 256, 3, 8, 2), "full", "dss", 2, 384, "single", False),  # layer-heavy
        (tiny(512, 256, 3, 8, 2), "full", "dss", 2, 384, "single", True),  # the same, checkpointed
        (tiny(4000, 128, 2, 4, 4), "full", "sft", 4, 128, "single", False),
        (tiny(2000, 128, 2, 4, 2), "lora", "dss", 4, 256, "lora", False),
    ],
    ids=["full-dss-logits", "full-dss-layers", "full-dss-layers-checkpointed", "full-sft", "lora-dss"],
)
def test_plan_is_within_20_percent_of_the_measured_peak(
    config: Any, finetune: str, method: str, batch: int, length: int, row: str, ac: bool, tmp_path: Path
) -> None:
    torch.set_num_threads(1)
    measured = measured_peak(config, finetune, method, batch, length, tmp_path, ac)
    shape = model_shape(config, "tiny", lora_r=8, lora_targets=TARGETS)
    settings = PlanSettings(
        finetune=finetune, method=method, batch_size=batch, max_length=length, activation_checkpointing=ac
    )
    planned = next(r for r in plan_rows(shape, settings) if r.strategy == row)
    print(f"planned / measured = {planned.total / measured:.3f}")
    assert 0.8 <= planned.total / measured <= 1.2, (planned, measured)


def test_published_shapes_have_their_published_parameter_counts() -> None:
    counts = {name: model_shape(load_model_config(name), name).params for name in KNOWN_SHAPES}
    assert counts == {
        "llama-3.2-1b": 1_235_814_400,
        "llama-3.1-8b": 8_030_261_248,
        "mistral-small-24b": 23_572_403_200,
    }


def test_full_finetuning_of_an_8b_model_needs_16_bytes_a_parameter_unsharded_and_fsdp_divides_it() -> None:
    shape = model_shape(load_model_config("llama-3.1-8b"), "8b", lora_r=16, lora_targets=TARGETS)
    single, ddp, fsdp, lora = plan_rows(shape, PlanSettings(gpus=8, mixed_precision="bf16"))
    assert single.weights + single.gradients + single.optimizer == 16 * shape.params  # ~128 GB
    assert ddp.gradients == 2 * single.gradients  # DDP's buckets
    state = fsdp.weights + fsdp.gradients + fsdp.optimizer
    gathered = 2 * shape.largest_unit * 2 + shape.largest_unit * 4
    assert state == pytest.approx(16 * shape.params / 8 + gathered, abs=8)
    assert fsdp.reference == 0 and single.reference == 4 * shape.params
    assert lora.optimizer == 8 * shape.lora_params and shape.lora_params == 32 * 16 * (4 * 4096 + 2 * 5120)
    assert not single.fits(80) and fsdp.total < single.total / 2


def test_star_train_plan_prints_the_table_and_refuses_what_it_cannot_plan(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["--plan", "--set", "model=llama-3.1-8b", "--set", "batch_size=1", "--gpus", "8"]) == 0
    out = capsys.readouterr().out
    assert "llama-3.1-8b: 8.03 B parameters, 8 GPU(s) of 80 GiB, micro-batch 1 x 2048" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:6]}
    assert rows["fsdp"][-1] == "yes" and rows["single"][-1] == "no"
    config = tiny(100, 64, 2, 4, 2)
    config.save_pretrained(str(tmp_path))
    assert main(["--plan", "--set", f"model={tmp_path}"]) == 0
    assert "0.00 B parameters" in capsys.readouterr().out
    assert main(["--plan", "--set", "model=/no/such/dir"]) == 2
    assert "--plan needs a model directory with config.json" in capsys.readouterr().err
    assert main(["--plan", "--set", "model=llama-3.1-8b", "--gpus", "0"]) == 2
