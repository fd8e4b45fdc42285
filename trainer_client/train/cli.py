"""`star-train`: run a finetuning recipe."""

from __future__ import annotations

import argparse
import json
import sys

from star_contract.cli_errors import USER_ERRORS, fail
from trainer_client.process_group import leave_process_group
from trainer_client.train.config import add_recipe_arguments, load_config, read_recipe

EPILOG = """examples:
  star-train --config examples/published.yaml --set model=/models/llama-3.2-1b-instruct \\
      --set data=train.jsonl --set scorer=scorer-0:50051 --set output_dir=runs/dss
  star-train --config examples/lora-dss.yaml --set method=sft          # the SFT baseline
  star-train --config examples/lora-dss.yaml --resume                  # continue after a stop
  star-train --config examples/published.yaml --set model=llama-3.1-8b --plan --gpus 8
                                       # bytes per GPU (weights, grads, AdamW, activations), no weights read

Every TrainConfig field (see examples/*.yaml, where each key is documented) can be set with --set.
Several GPUs: accelerate launch -m trainer_client.train.cli --config ... (each process scores its shard).
Sharded (FSDP2: weights, gradients and AdamW states split across the processes; gloo on CPU):
  torchrun --nproc_per_node 8 -m trainer_client.train.cli --config ... --set sharding=fsdp
"""


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="star-train",
        description="Finetune a causal LM with STAR-DSS (token-level safety shaping from a guard's STAR "
        "scores), RS (whole-response rejection) or plain SFT. Writes checkpoints, metrics.jsonl "
        "(one line per optimizer step), summary.json and the final weights under output_dir.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_recipe_arguments(ap, config_required=False)
    ap.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in output_dir")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar (e.g. in CI logs)")
    plan = ap.add_argument_group("memory plan (nothing is trained; only the model's config.json is read)")
    plan.add_argument(
        "--plan",
        action="store_true",
        help="print the bytes per GPU the recipe needs as one process, DDP, FSDP and LoRA, and whether "
        "each fits; `model` may be a directory or llama-3.2-1b, llama-3.1-8b, mistral-small-24b",
    )
    plan.add_argument("--gpus", type=int, default=1, help="GPUs to plan for (DDP and FSDP; default 1)")
    plan.add_argument("--gpu-gib", type=float, default=80.0, help="memory of one GPU in GiB (default 80)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = list(args.overrides)
    if args.resume:
        overrides.append("resume=true")
    if args.no_progress:
        overrides.append("progress=false")
    if args.plan:
        return print_plan(args, overrides)
    try:
        cfg = load_config(args.config, overrides)
    except USER_ERRORS as e:
        return fail("star-train", e)
    from trainer_client.train.loop import run_training

    try:
        result = run_training(cfg)
    except USER_ERRORS as e:
        return fail("star-train", e)
    except KeyboardInterrupt:
        print("star-train: interrupted; continue with --resume from the last checkpoint", file=sys.stderr)
        return 130
    print(
        json.dumps(
            {
                "output_dir": result.output_dir,
                "steps": result.steps,
                "finished": result.finished,
                **{k: round(v, 6) for k, v in result.metrics.items()},
            }
        )
    )
    return 0


def print_plan(args: argparse.Namespace, overrides: list[str]) -> int:
    from trainer_client.train.memory_plan import plan_text

    try:
        print(plan_text(read_recipe(args.config, overrides), args.gpus, args.gpu_gib))
    except USER_ERRORS as e:
        return fail("star-train", e)
    return 0


def entry(argv: list[str] | None = None) -> int:
    """The `star-train` command: `main`, then, when it succeeded, leave the process group (once per
    process, so `main` itself can run several recipes in one process). A failed process leaves it
    alone: its peers may be inside a collective, and torchrun ends them."""
    code = main(argv)
    if code == 0:
        leave_process_group()
    return code


if __name__ == "__main__":
    raise SystemExit(entry())
