"""`star-landscape`: the safety landscape and VISAGE of a model, judged by a guard or refusal keywords."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from star_contract.cli_errors import RUN_ERRORS, fail
from trainer_client.evaluation.sources import HELP as PROMPTS_HELP
from trainer_client.evaluation.sources import load_harmful
from trainer_client.generation import GenerationConfig
from trainer_client.judges import Judge, KeywordJudge, guard_service_judge, in_process_guard_judge
from trainer_client.landscape.grid import linspace
from trainer_client.landscape.results import RunMismatch
from trainer_client.landscape.runner import LandscapeConfig, load_policy, run_landscape
from trainer_client.landscape.visage import BASIN_RULES, DEFAULT_BASIN_RULE, DEFAULT_TOLERANCE

EPILOG = """\
examples:
  star-landscape ./llama-3-8b-instruct --prompts advbench.csv --out runs/aligned --scorer 10.0.0.5:50051
  star-landscape ./aligned --prompts advbench --out runs/aligned --judge keyword   (pyrit installed)
  star-landscape ./aligned --prompts harmful.txt --out runs/2d --mode 2d --judge keyword --steps 11
  star-landscape ./aligned --prompts harmful.txt --out runs/path --mode interp --finetuned ./sft-lora \\
      --guard ./llama-guard-3-1b

Results: OUT/points.jsonl (one line per point, append-only; rerunning the same command resumes and
skips finished points), OUT/results.json (every point, VISAGE, basin bounds, the basin rule behind
them and both rules' numbers under by_rule) and the PNG plot(s). Changing --basin or
--basin-tolerance and rerunning re-summarises the finished points without recomputing them.
"""


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="star-landscape",
        description="Perturb a model's weights along random directions (or towards a finetuned checkpoint), "
        "measure safety = 100 - attack success rate on harmful prompts at every point, and report VISAGE: "
        "the mean safety inside the safety basin, averaged over directions.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "model", help="local model directory (Hugging Face causal LM) or a peft LoRA adapter directory"
    )
    ap.add_argument("--prompts", required=True, help=PROMPTS_HELP)
    ap.add_argument(
        "--max-prompts", type=int, default=None, help="use only the first N prompts (default: all)"
    )
    ap.add_argument("--out", required=True, help="output directory (created; reused to resume a run)")
    ap.add_argument(
        "--mode",
        choices=["1d", "2d", "interp"],
        default="1d",
        help="1d: --directions random lines (VISAGE); 2d: a random plane (heatmap); "
        "interp: the path from MODEL to --finetuned, extended past both ends (default: 1d)",
    )
    ap.add_argument(
        "--finetuned", help="interp only: the other end, a full checkpoint or a LoRA adapter of MODEL"
    )
    ap.add_argument(
        "--base-model", help="base model directory when MODEL is a LoRA adapter (default: its config's)"
    )
    grid = ap.add_argument_group("grid")
    grid.add_argument(
        "--directions", type=int, default=3, help="random directions of a 1d landscape (default: 3)"
    )
    grid.add_argument("--alpha-min", type=float, default=-0.5, help="smallest coefficient (default: -0.5)")
    grid.add_argument("--alpha-max", type=float, default=0.5, help="largest coefficient (default: 0.5)")
    grid.add_argument(
        "--steps", type=int, default=21, help="grid points per axis, 0 included if odd (default: 21)"
    )
    grid.add_argument("--seed", type=int, default=0, help="direction k uses seed + k (default: 0)")
    grid.add_argument(
        "--interp-steps", type=int, default=11, help="interp points from 0 to 1 inclusive (default: 11)"
    )
    grid.add_argument(
        "--interp-extend",
        type=int,
        default=3,
        help="interp points added past each end, same spacing (default: 3)",
    )
    grid.add_argument(
        "--basin",
        choices=BASIN_RULES,
        default=DEFAULT_BASIN_RULE,
        help="the 1d basin rule behind VISAGE: published (poloclub/llm-landscape's: from each edge of the "
        "grid in to the first point above total collapse, ASR <= 99.99, walls included) or tolerance "
        "(ours: the contiguous run around alpha=0 within --basin-tolerance of its safety); results.json "
        f"holds both under by_rule. 2d always uses tolerance (default: {DEFAULT_BASIN_RULE})",
    )
    grid.add_argument(
        "--basin-tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help="--basin tolerance (and 2d): the basin is the contiguous run around alpha=0 whose safety "
        f"stays at least the unperturbed safety minus this many points (default: {DEFAULT_TOLERANCE})",
    )
    judge = ap.add_argument_group("judge")
    judge.add_argument(
        "--judge",
        choices=["auto", "scorer", "guard", "keyword"],
        default="auto",
        help="scorer: the guard service (--scorer); guard: a local guard directory (--guard); keyword: the "
        "published refusal phrases; auto: scorer if --scorer is given, else guard if --guard, else keyword",
    )
    judge.add_argument("--scorer", action="append", default=[], help="scorer address host:port (repeatable)")
    judge.add_argument("--guard", help="local guard model directory for --judge guard")
    judge.add_argument(
        "--guard-preset", default="llama-guard-3", help="guard preset name (default: llama-guard-3)"
    )
    gen = ap.add_argument_group("generation")
    gen.add_argument("--system-prompt", help="a system prompt put before every harmful prompt")
    gen.add_argument("--system-prompt-file", help="read the system prompt from this file")
    gen.add_argument(
        "--max-new-tokens", type=int, default=512, help="tokens generated per response (default: 512)"
    )
    gen.add_argument("--batch-size", type=int, default=16, help="prompts per generate call (default: 16)")
    run = ap.add_argument_group("resources")
    run.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    run.add_argument(
        "--dtype", choices=["float32", "bfloat16", "float16"], default="float32", help="model dtype"
    )
    run.add_argument(
        "--store",
        choices=["auto", "memory", "disk"],
        default="auto",
        help="where original weights are kept for exact restoring: memory (CPU copies), disk (temporary "
        "files read back per tensor), auto (disk for CPU models, memory otherwise)",
    )
    run.add_argument("--store-dir", help="parent directory for the disk store (default: system temp dir)")
    run.add_argument(
        "--cache-directions",
        action="store_true",
        help="keep random directions in memory (faster, one extra float32 model) instead of redrawing them",
    )
    out = ap.add_argument_group("output")
    out.add_argument(
        "--save-responses", action="store_true", help="store every generated response in points.jsonl"
    )
    out.add_argument("--overwrite", action="store_true", help="discard results of a different run in --out")
    out.add_argument("--no-plot", action="store_true", help="skip the PNG plots")
    out.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap


def make_judge(args: argparse.Namespace, device: str) -> Judge:
    kind = args.judge
    if kind == "auto":
        kind = "scorer" if args.scorer else "guard" if args.guard else "keyword"
        if kind == "keyword":
            print(
                "star-landscape: no --scorer or --guard given; judging with refusal keywords", file=sys.stderr
            )
    if kind == "scorer":
        if not args.scorer:
            raise ValueError("--judge scorer needs --scorer HOST:PORT")
        return guard_service_judge([a for s in args.scorer for a in s.split(",") if a])
    if kind == "guard":
        if not args.guard:
            raise ValueError("--judge guard needs --guard DIR")
        return in_process_guard_judge(args.guard, args.guard_preset, device=device)
    return KeywordJudge()


_ERRORS: tuple[type[BaseException], ...] = (*RUN_ERRORS, RunMismatch)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import torch

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if args.mode == "interp" and not args.finetuned:
            raise ValueError("--mode interp needs --finetuned")
        for name in ("directions", "steps", "max_new_tokens", "batch_size"):
            if getattr(args, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        system = args.system_prompt
        if args.system_prompt_file:
            system = Path(args.system_prompt_file).read_text().strip()
        prompts = [h.prompt for h in load_harmful(args.prompts, args.max_prompts)]
        cfg = LandscapeConfig(
            mode=args.mode,
            alphas=linspace(args.alpha_min, args.alpha_max, args.steps),
            betas=linspace(args.alpha_min, args.alpha_max, args.steps),
            n_directions=args.directions,
            seed=args.seed,
            interp_steps=args.interp_steps,
            interp_extend=args.interp_extend,
            basin_rule=args.basin,
            basin_tolerance=args.basin_tolerance,
            cache_directions=args.cache_directions,
            store=args.store,
            store_dir=args.store_dir,
            save_responses=args.save_responses,
            generation=GenerationConfig(
                max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, system_prompt=system
            ),
        )
        judge = make_judge(args, device)
        model, tokenizer = load_policy(args.model, dtype=args.dtype, device=device, base=args.base_model)
        results = run_landscape(
            model,
            tokenizer,
            prompts,
            judge,
            args.out,
            cfg,
            model_id=str(args.model),
            other=args.finetuned,
            overwrite=args.overwrite,
            progress=not args.quiet,
            plot=not args.no_plot,
        )
    except _ERRORS as exc:
        return fail("star-landscape", exc)
    summary: dict[str, Any] = {
        k: results[k]
        for k in ("mode", "visage", "basin_rule", "origin_safety", "safety_aligned", "safety_finetuned")
        if k in results
    }
    if "basins" in results:
        summary["basins"] = [[b["lo"], b["hi"]] for b in results["basins"]]
    if "basin" in results:
        summary["basin"] = {"alpha": results["basin"]["alpha_range"], "beta": results["basin"]["beta_range"]}
    summary["results"] = str(Path(args.out) / "results.json")
    summary["plots"] = results.get("plots", [])
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
