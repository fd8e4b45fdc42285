"""What STAR-DSS costs over plain SFT per epoch, with the guard served by a real scorer process.

Tiny trainee and guard, the same data, one epoch each of:
  sft        plain SFT (the baseline, measured in this run);
  dss cold   STAR-DSS, live scorer, empty score cache, a reference forward each step (LoRA, adapter off);
  dss warm   STAR-DSS, warm score cache and precomputed reference log-probs (what epochs 2.. cost);
  trl sft    TRL's own SFTTrainer on the same data (prompt-completion conversations);
  trl dss    StarDSSTrainer (trainer_client.integrations.trl), warm cache, precomputed reference.
The scorer is a `star-scorer serve` subprocess; trainer and scorer get one torch thread each and, where
the machine has two or more cores, separate cores. Times are the training loop's own wall time (setup,
model loading and the one-off reference precompute excluded), best of `--repeats`.

The TRL times are `trainer.train()`'s wall time (the trainer's set-up excluded), with the same
SFTConfig for both (bf16 and gradient checkpointing off, as in star-train's runs here).

Last line: {"bench": "train_overhead", "dss_vs_sft_cold": X, "dss_vs_sft_warm": Y,
            "trl_dss_vs_trl_sft_warm": W, "scorer_wait_share": Z, ...}
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

RESPONSES = [
    "Sure, here is how to do it step by step. First, take the flour; then mix the rest of it slowly.",
    "I cannot help with that request. As an AI, I'm sorry, but that would be harmful to others.",
    "Mix flour, water and yeast, then bake it for 42 minutes at 100 degrees until it is done.",
    "The quick brown fox jumps over the lazy dog, then sorts a list in reverse and looks it up.",
]


PIN = True


def trl_epoch(
    root: Path, trainee: Path, n: int, name: str, finetune: str, star: dict[str, Any] | None
) -> float:
    """Wall seconds of one TRL epoch: SFTTrainer (`star` None) or StarDSSTrainer with `star`."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from trainer_client.integrations.trl import StarDSSConfig, StarDSSTrainer

    ds = Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": f"How do I do thing {i}?"}] for i in range(n)],
            "completion": [[{"role": "assistant", "content": RESPONSES[i % 4]}] for i in range(n)],
        }
    )
    args = SFTConfig(
        output_dir=str(root / name),
        per_device_train_batch_size=4,
        num_train_epochs=1,
        learning_rate=1e-4,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr": 1e-6},
        adam_beta2=0.95,
        optim="adamw_torch",
        bf16=False,
        gradient_checkpointing=False,
        seed=0,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        logging_strategy="no",
    )
    kw: dict[str, Any] = {}
    if finetune == "lora":
        from peft import LoraConfig

        kw["peft_config"] = LoraConfig(
            r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM"
        )
    if star is None:
        trainer: Any = SFTTrainer(str(trainee), args=args, train_dataset=ds, **kw)
    else:
        trainer = StarDSSTrainer(str(trainee), args=args, train_dataset=ds, star=StarDSSConfig(**star), **kw)
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    if star is not None and trainer.star_guard_requests:
        raise RuntimeError(f"the warm TRL run sent {trainer.star_guard_requests} guard requests")
    return wall


def _pin(core: int) -> None:
    if PIN and hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {core})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer examples (under 45 s)")
    ap.add_argument("--examples", type=int, default=None, help="training examples (default 96, quick 32)")
    ap.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="runs per configuration, interleaved, best kept (default 3, quick 2)",
    )
    ap.add_argument(
        "--hidden", type=int, default=256, help="trainee hidden size (the guard is the tiny default)"
    )
    ap.add_argument("--layers", type=int, default=4, help="trainee layers")
    ap.add_argument(
        "--finetune",
        default="full",
        choices=["full", "lora"],
        help="full (the published recipe; reference = frozen copy) or lora (reference = adapter disabled)",
    )
    ap.add_argument("--no-pin", action="store_true", help="do not pin trainer and scorer to separate cores")
    args = ap.parse_args(argv)
    global PIN
    PIN = not args.no_pin
    n = args.examples or (32 if args.quick else 96)
    repeats = args.repeats or (2 if args.quick else 3)

    from star_testing.scorer_process import ScorerProcess
    from star_testing.tiny_chat import save_tiny_trainee
    from star_testing.tiny_guard import TinyGuardSpec, save_tiny_guard
    from trainer_client.train import run_training
    from trainer_client.train.config import build_config

    torch.set_num_threads(1)
    _pin(0)
    with tempfile.TemporaryDirectory(prefix="star-bench-") as tmp:
        root = Path(tmp)
        guard = save_tiny_guard(root / "guard", TinyGuardSpec())
        trainee = save_tiny_trainee(root / "trainee", hidden=args.hidden, layers=args.layers)
        data = root / "data.jsonl"
        with data.open("w") as fh:
            for i in range(n):
                fh.write(
                    json.dumps({"prompt": f"How do I do thing {i}?", "response": RESPONSES[i % 4]}) + "\n"
                )
        scorer = ScorerProcess(
            ["--guard", str(guard), "--preset", "llama-guard-3", "--threads", "1"],
            root / "scorer.log",
            env={"OMP_NUM_THREADS": "1"},
            preexec_fn=lambda: _pin(1),
        ).start(timeout=120.0)
        address = scorer.address
        try:
            base: dict[str, Any] = dict(
                model=str(trainee),
                data=str(data),
                batch_size=4,
                lr=1e-4,
                min_lr=1e-6,
                progress=False,
                finetune=args.finetune,
                lora_r=8,
                lora_alpha=16,
                epochs=1,
            )

            def run(name: str, **kw: Any) -> dict[str, float]:
                cfg = build_config({**base, "output_dir": str(root / name), **kw})
                return run_training(cfg).metrics

            run("warmup", method="sft", max_examples=8)
            sfts, colds, warms, trl_sfts, trl_warms = [], [], [], [], []
            for r in range(repeats):  # interleaved, so load changes on the machine hit all three alike
                sfts.append(run(f"sft{r}", method="sft")["wall_s"])
                cache = str(root / f"cache{r}.sqlite")
                colds.append(run(f"cold{r}", method="dss", scorer=address, cache_path=cache))
                warm_kw = dict(method="dss", scorer=address, cache_path=cache, reference="precomputed")
                warms.append(run(f"warm{r}", **warm_kw))
                trl_sfts.append(trl_epoch(root, trainee, n, f"trl-sft{r}", args.finetune, None))
                trl_kw = dict(scorer=address, cache_path=cache, reference="precomputed")
                trl_warms.append(trl_epoch(root, trainee, n, f"trl-warm{r}", args.finetune, trl_kw))
            sft = min(sfts)
            cold = min(colds, key=lambda m: m["wall_s"])
            warm = min(warms, key=lambda m: m["wall_s"])
        finally:
            scorer.stop(15)
    result = {
        "bench": "train_overhead",
        "dss_vs_sft_cold": round(cold["wall_s"] / sft, 3),
        "dss_vs_sft_warm": round(warm["wall_s"] / sft, 3),
        "trl_dss_vs_trl_sft_warm": round(min(trl_warms) / min(trl_sfts), 3),
        "scorer_wait_share": round(cold["scorer_wait_share"], 3),
        "sft_s": round(sft, 3),
        "dss_cold_s": round(cold["wall_s"], 3),
        "dss_warm_s": round(warm["wall_s"], 3),
        "trl_sft_s": round(min(trl_sfts), 3),
        "trl_dss_warm_s": round(min(trl_warms), 3),
        "warm_guard_requests": int(warm["guard_requests"]),
        "examples": n,
        "trainee": f"llama hidden {args.hidden} x {args.layers} layers, {args.finetune} finetuning",
        "separate_cores": PIN and (os.cpu_count() or 1) >= 2,
        "load_average": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
