"""`star-demo`: the whole system on the toy world, in one command.

Starts the scorer service on the toy guard, finetunes the toy aligned chat model with `sft`, `rs` and
`dss` on the same harmful mix, evaluates the four models, draws the 1D safety landscapes of the aligned,
sft and dss models (judged by the service) and writes a report (tables, bar chart, STAR trajectories,
landscapes) with the acceptance criteria measured.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from star_contract.cli_errors import RUN_ERRORS, fail
from star_toy.scorer_process import scorer_process
from star_toy.stages import (
    LANDSCAPE_MODELS,
    METHODS,
    DemoConfig,
    evaluate_model,
    finetune,
    guard_accuracy,
    prepare,
    rs_kept,
    say,
    trajectories,
    write_outputs,
)


def parser() -> argparse.ArgumentParser:
    d = DemoConfig()
    ap = argparse.ArgumentParser(
        prog="star-demo",
        description="Run STAR end to end on the built-in toy world: start the scorer on the toy guard, "
        "finetune the toy aligned chat model with sft, rs and dss on a mix of a new benign skill and "
        "harmful examples, evaluate all four models, draw the 1D safety landscapes (VISAGE) of the "
        "aligned, sft and dss models and write OUT/report.md, OUT/bars.png, OUT/trajectories.png and "
        "OUT/landscapes/landscapes_1d.png. About 2-3 minutes on 2 CPU cores.",
    )
    ap.add_argument("--out", default=d.out, help=f"report directory (default: {d.out})")
    ap.add_argument(
        "--models", default=d.models, help="directory with the toy guard/ and chat/ (default: shipped)"
    )
    ap.add_argument(
        "--train-guard",
        default="",
        help="guard directory that gives the training signal (rs verdicts, dss scores), e.g. the weak "
        "guard from `star-toy-build --only weak-guard`; default: the toy guard. Evaluation always "
        "judges with the toy guard",
    )
    ap.add_argument("--methods", default=",".join(d.methods), help="comma-separated subset of sft,rs,dss")
    ap.add_argument(
        "--harmful-ratio",
        type=float,
        default=d.harmful_ratio,
        help=f"share of harmful examples in the finetuning mix (default {d.harmful_ratio})",
    )
    ap.add_argument(
        "--finetune-size",
        type=int,
        default=d.finetune_size,
        help=f"examples in the finetuning mix (default {d.finetune_size})",
    )
    ap.add_argument("--epochs", type=int, default=d.epochs, help=f"finetuning epochs (default {d.epochs})")
    ap.add_argument(
        "--batch-size", type=int, default=d.batch_size, help=f"examples per step (default {d.batch_size})"
    )
    ap.add_argument(
        "--lr", type=float, default=d.lr, help=f"peak learning rate, full finetuning (default {d.lr})"
    )
    ap.add_argument("--lambda-kl", type=float, default=d.lambda_kl, help="STAR-DSS KL weight (default 0.5)")
    ap.add_argument(
        "--threads",
        type=int,
        default=d.threads,
        help="torch threads for the trainer and for the scorer each (default 1)",
    )
    ap.add_argument(
        "--max-new-tokens",
        type=int,
        default=d.max_new_tokens,
        help=f"tokens generated per evaluation response (default {d.max_new_tokens})",
    )
    ap.add_argument("--seed", type=int, default=d.seed, help="seed of the data and the runs (default 0)")
    ap.add_argument(
        "--no-landscape",
        action="store_true",
        help="skip the 1D safety landscapes of the aligned, sft and dss models (saves about 30 s)",
    )
    return ap  # fmt: skip


def draw_landscapes(judge_fn: Any, models: dict[str, str], out_dir: Path) -> dict[str, Any]:
    """1D safety landscapes of `models` (name -> directory) on the same directions and prompts, judged
    by `judge_fn` (the toy guard through the service). Returns the models' VISAGE, safety at the origin
    and basins, the overlay plot, the markdown table and the grid."""
    from star_toy.landscapes import ToyLandscapeConfig, toy_landscapes
    from trainer_client.landscape import VerdictJudge, markdown_table

    # Every demo run retrains its models, so points left by an earlier run in this directory are stale.
    shutil.rmtree(out_dir, ignore_errors=True)
    cfg = ToyLandscapeConfig()
    t0 = time.time()
    ls = toy_landscapes(models, VerdictJudge(judge_fn, name="toy-guard"), out_dir, cfg, progress=True)
    return {
        "models": ls["models"],
        "plot": ls["plot"],
        "table": markdown_table(ls),
        "grid": {"alpha_max": cfg.alpha_max, "steps": cfg.steps, "directions": cfg.directions,
                 "prompts": cfg.prompts, "max_new_tokens": cfg.max_new_tokens,
                 "basin_rule": cfg.basin_rule, "basin_tolerance": cfg.basin_tolerance},
        "seconds": round(time.time() - t0, 1),
    }  # fmt: skip


def run(cfg: DemoConfig, command: str = "star-demo") -> dict[str, Any]:
    """The demo, stage by stage; returns the summary it also writes to OUT/summary.json."""
    import torch

    from star_client import ScorerClient

    torch.set_num_threads(cfg.threads)
    t_start = time.time()
    setup = prepare(cfg)
    notes: dict[str, Any] = {
        "command": command,
        "settings": {k: v for k, v in vars(cfg).items() if k != "out"},
    }
    results: dict[str, Any] = {}
    rows: dict[str, Any] = {}
    finals: dict[str, str] = {"aligned": str(setup.chat_dir)}
    landscapes: dict[str, Any] | None = None
    with ExitStack() as stack:
        addr = stack.enter_context(scorer_process(setup.guard_dir, cfg.threads, setup.out / "scorer.log"))
        client = stack.enter_context(ScorerClient(addr))
        say(f"scorer serving the toy guard at {addr}")
        train_addr, tclient = addr, client
        if cfg.train_guard:
            log = setup.out / "train_scorer.log"
            train_addr = stack.enter_context(scorer_process(setup.train_guard, cfg.threads, log))
            tclient = stack.enter_context(ScorerClient(train_addr))
            say(f"training signal from {setup.train_guard} at {train_addr}")

        def judge(convs: list[Any]) -> list[Any]:  # every stage reads `unsafe` alone
            return list(client.judge(convs, p_unsafe_only=True))

        guard_acc = guard_accuracy(judge)
        notes["rs_kept"] = rs_kept(lambda convs: list(tclient.judge(convs, p_unsafe_only=True)), setup.mix)
        trajs = trajectories(tclient, setup.mix)
        results["aligned"], rows["aligned"] = evaluate_model(
            setup, judge, "aligned", str(setup.chat_dir), 0.0
        )
        for method in cfg.methods:
            t0 = time.time()
            finals[method] = finetune(setup, method, train_addr)
            results[method], rows[method] = evaluate_model(
                setup, judge, method, finals[method], time.time() - t0
            )
        if cfg.landscape:
            ls_models = {k: finals[k] for k in LANDSCAPE_MODELS if k in finals}
            say(f"safety landscapes of {', '.join(ls_models)}")
            landscapes = draw_landscapes(judge, ls_models, setup.out / "landscapes")
    summary = write_outputs(setup, rows, results, guard_acc, trajs, notes, landscapes)
    summary["seconds"] = round(time.time() - t_start, 1)
    (setup.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nreport: {summary['report']}  ({summary['seconds']:.0f} s)")
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    bad = [m for m in methods if m not in METHODS]
    problems = [
        (not bad, f"unknown method(s) {', '.join(bad)}; choose from {', '.join(METHODS)}"),
        (0.0 <= args.harmful_ratio <= 1.0, "--harmful-ratio must be in [0, 1]"),
        (args.finetune_size >= 10, "--finetune-size must be >= 10"),
        (args.epochs >= 1 and args.batch_size >= 1, "--epochs and --batch-size must be >= 1"),
        (args.lr > 0 and args.threads >= 1 and args.max_new_tokens >= 1,
         "--lr must be > 0, --threads and --max-new-tokens >= 1"),
    ]  # fmt: skip
    for ok, msg in problems:
        if not ok:
            print(f"star-demo: error: {msg}", file=sys.stderr)
            return 2
    cfg = DemoConfig(
        out=args.out, models=args.models, train_guard=args.train_guard, methods=methods,
        harmful_ratio=args.harmful_ratio,
        finetune_size=args.finetune_size, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        lambda_kl=args.lambda_kl, threads=args.threads, max_new_tokens=args.max_new_tokens, seed=args.seed,
        landscape=not args.no_landscape,
    )  # fmt: skip
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        run(
            cfg, "star-demo " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
        )
    except RUN_ERRORS as exc:
        return fail("star-demo", exc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
