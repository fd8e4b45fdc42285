"""A TRL SFT script switched to STAR-DSS: `StarDSSTrainer` instead of `SFTTrainer`, and a scorer.

    python examples/trl_star_dss.py --model MODEL_DIR --data train.jsonl --scorer scorer-0:50051

`train.jsonl` holds conversations: {"messages": [...]}, {"prompt": [...], "completion": [...]} (lists
of messages, TRL's conversational prompt-completion) or {"prompt": "...", "response": "..."}.
Several processes: `accelerate launch examples/trl_star_dss.py ...` (or `torchrun --nproc_per_node N`);
add `--fsdp` to shard with FSDP2 (full finetuning with dss then needs `--reference precomputed`).
See docs/training.md.
"""

from __future__ import annotations

import argparse
from typing import Any


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="local directory of the trainee (with a chat template)")
    ap.add_argument("--data", required=True, help="a .jsonl of conversations")
    ap.add_argument("--output-dir", default="runs/trl-star-dss")
    ap.add_argument("--method", default="dss", choices=["sft", "rs", "dss"])
    ap.add_argument("--scorer", help="host:port[,host:port] of the scorer service, or local:GUARD_DIR")
    ap.add_argument("--scores-file", help="a star-score-dataset JSONL instead of a scorer (offline)")
    ap.add_argument("--reference", default="auto", choices=["auto", "precomputed"])
    ap.add_argument("--lambda-kl", type=float, default=0.5)
    ap.add_argument("--lora", action="store_true", help="train a LoRA adapter (reference: adapter off)")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--max-steps", type=int, default=-1)
    ap.add_argument("--lr", type=float, default=5e-6)
    ap.add_argument("--batch-size", type=int, default=4, help="per device")
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--max-length", type=int, default=2048)
    ap.add_argument("--no-bf16", action="store_true", help="float32 compute (SFTConfig's default is bf16)")
    ap.add_argument("--cpu", action="store_true")
    ap.add_argument("--fsdp", action="store_true", help="shard across the processes with FSDP2 (accelerate)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from datasets import load_dataset
    from trl import SFTConfig

    from trainer_client.integrations.trl import StarDSSConfig, StarDSSTrainer
    from trainer_client.process_group import leave_process_group, release_trainer

    dataset = load_dataset("json", data_files=args.data, split="train")
    sharded: dict[str, Any] = {"fsdp": True, "fsdp_config": {"version": 2}} if args.fsdp else {}
    config = SFTConfig(
        output_dir=args.output_dir,
        num_train_epochs=args.epochs,
        max_steps=args.max_steps,
        learning_rate=args.lr,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum,
        max_length=args.max_length,
        bf16=not args.no_bf16,
        use_cpu=args.cpu,
        report_to=[],
        save_strategy="no",
        **sharded,
    )
    peft_config = None
    if args.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    try:
        star = StarDSSConfig(
            method=args.method,
            scorer=args.scorer,
            scores_file=args.scores_file,
            reference=args.reference,
            lambda_kl=args.lambda_kl,
        )
        trainer = StarDSSTrainer(
            model=args.model, args=config, train_dataset=dataset, peft_config=peft_config, star=star
        )
    except ValueError as e:  # a refused combination: one line (from the first process), no traceback
        return _refused(str(e))
    trainer.train()
    trainer.save_model(args.output_dir)
    # under a launcher, leave the process group before exit (gloo can abort at exit otherwise): first
    # drop every reference to the trained model, which holds the group
    release_trainer(trainer)
    del trainer
    leave_process_group()
    return 0


def _refused(message: str) -> int:
    import os
    import sys

    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    if os.environ.get("RANK", "0") == "0":
        print(f"trl_star_dss.py: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
