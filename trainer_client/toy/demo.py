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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from star_contract.cli_errors import RUN_ERRORS, fail
from trainer_client.toy import datasets, generators, lexicon, policy
from trainer_client.toy.build import shipped_models
from trainer_client.toy.scorer_process import scorer_process

METHODS = ("sft", "rs", "dss")
LANDSCAPE_MODELS = ("aligned", "sft", "dss")
"""The models whose safety landscapes the demo draws (those among the run's models)."""


@dataclass(frozen=True)
class DemoConfig:
    """Everything the demo does, with defaults that meet the acceptance targets on 2 CPU cores."""

    out: str = "star-demo-report"
    models: str = str(shipped_models())
    train_guard: str = ""
    """A guard directory for the training signal (rs verdicts, dss scores); '' = the toy guard. The
    evaluation always judges with the toy guard."""
    methods: tuple[str, ...] = METHODS
    harmful_ratio: float = 0.1
    harmful_shapes: tuple[str, ...] = generators.HARMFUL_SHAPES
    finetune_size: int = 400
    epochs: int = 8
    batch_size: int = 8
    lr: float = 6e-4
    lambda_kl: float = 0.5
    threads: int = 1
    max_new_tokens: int = 64
    seed: int = 0
    landscape: bool = True
    """Draw the 1D safety landscapes of aligned, sft and dss (about 30 s on 2 cores)."""


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


def _say(msg: str) -> None:
    print(f"[star-demo] {msg}", file=sys.stderr, flush=True)


def draw_landscapes(judge_fn: Any, models: dict[str, str], out_dir: Path) -> dict[str, Any]:
    """1D safety landscapes of `models` (name -> directory) on the same directions and prompts, judged
    by `judge_fn` (the toy guard through the service). Returns the models' VISAGE, safety at the origin
    and basins, the overlay plot, the markdown table and the grid."""
    from trainer_client.landscape import VerdictJudge, markdown_table
    from trainer_client.toy.landscapes import ToyLandscapeConfig, toy_landscapes

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
    """The demo; returns the summary it also writes to OUT/summary.json."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from star_client import ScorerClient
    from star_contract.types import Conversation, CutKind, CutSpec, ScoreRequest
    from trainer_client.evaluation.runner import EvalConfig, EvalResult, evaluate
    from trainer_client.generation import GenerationConfig
    from trainer_client.judges import VerdictJudge
    from trainer_client.toy import report
    from trainer_client.toy.eval_sets import toy_sets
    from trainer_client.toy.guard import GuardBuildConfig, guard_data
    from trainer_client.train import run_training
    from trainer_client.train.config import TrainConfig

    torch.set_num_threads(cfg.threads)
    t_start = time.time()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    models = Path(cfg.models)
    guard_dir, chat_dir = models / "guard", models / "chat"
    train_guard = Path(cfg.train_guard) if cfg.train_guard else guard_dir
    for d in (guard_dir, chat_dir, train_guard):
        if not (d / "config.json").is_file():
            raise ValueError(f"{d} is not a model directory; run `star-toy-build --out {models}` first")
    wcfg = datasets.WorldConfig(seed=cfg.seed, finetune_size=cfg.finetune_size,
                                harmful_ratio=cfg.harmful_ratio,
                                harmful_shapes=cfg.harmful_shapes)  # fmt: skip
    data = datasets.write_datasets(out / "data", wcfg)
    mix = datasets.finetune_mix(wcfg)
    harmful, benign = toy_sets()
    gen = EvalConfig(GenerationConfig(max_new_tokens=cfg.max_new_tokens, batch_size=32))

    rows: dict[str, report.MethodRow] = {}
    notes: dict[str, Any] = {
        "command": command,
        "settings": {k: v for k, v in vars(cfg).items() if k != "out"},
    }
    results: dict[str, EvalResult] = {}
    finals: dict[str, str] = {"aligned": str(chat_dir)}
    landscapes: dict[str, Any] | None = None
    with ExitStack() as stack:
        addr = stack.enter_context(scorer_process(guard_dir, cfg.threads, out / "scorer.log"))
        client = stack.enter_context(ScorerClient(addr))
        _say(f"scorer serving the toy guard at {addr}")
        train_addr, tclient = addr, client
        if cfg.train_guard:
            train_addr = stack.enter_context(
                scorer_process(train_guard, cfg.threads, out / "train_scorer.log")
            )
            tclient = stack.enter_context(ScorerClient(train_addr))
            _say(f"training signal from {train_guard} at {train_addr}")

        def judge(convs: list[Conversation]) -> list[Any]:
            return list(client.judge(convs))

        # Guard accuracy, through the running service, on held-out judged prefixes.
        _, held = guard_data(GuardBuildConfig())
        held = held[:600]
        verdicts = [v for i in range(0, len(held), 64) for v in judge(
            [Conversation.from_pair(p.prompt, p.prefix) for p in held[i : i + 64]])]  # fmt: skip
        guard_acc = sum(v.unsafe == p.unsafe for v, p in zip(verdicts, held, strict=True)) / len(held)
        _say(f"toy guard verdict accuracy on {len(held)} held-out prefixes: {guard_acc:.3f}")

        # What a whole-response verdict (rs) keeps of the harmful examples in the mix.
        harm_ex = [e for e in mix if e.kind.startswith("harmful:")]
        v_mix = (
            tclient.judge([Conversation.from_pair(e.prompt, e.response) for e in harm_ex]) if harm_ex else []
        )
        kept: dict[str, str] = {}
        for shape in generators.HARMFUL_SHAPES:
            idx = [i for i, e in enumerate(harm_ex) if e.kind == f"harmful:{shape}"]
            if idx:
                kept[shape] = f"{sum(not v_mix[i].unsafe for i in idx)} of {len(idx)} harmful examples kept"
        notes["rs_kept"] = kept

        # STAR trajectories of a few training responses.
        picks = [next(e for e in mix if e.kind == f"harmful:{s}") for s in generators.HARMFUL_SHAPES
                 if any(e.kind == f"harmful:{s}" for e in mix)]  # fmt: skip
        picks.append(next(e for e in mix if e.kind == lexicon.NEW_SKILL))
        trajs = [
            report.Trajectory(e.kind, e.prompt, e.response, tclient.score(
                ScoreRequest(Conversation.from_pair(e.prompt, e.response), CutSpec(CutKind.WORDS, 5))))
            for e in picks
        ]  # fmt: skip

        def eval_model(name: str, path: str, train_s: float) -> None:
            _say(f"evaluating {name} on {len(harmful)} hazard requests and {len(benign)} benign items")
            tok = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path).eval()
            res = evaluate(model, tok, harmful, benign, VerdictJudge(judge, name="toy-guard"), gen)
            results[name] = res
            by_policy = [policy.policy_verdict(p, r).unsafe for p, r, _ in res.harmful_responses]
            rows[name] = report.MethodRow(
                name=name,
                harmful_rate=res.harmful_rate or 0.0,
                policy_harmful_rate=sum(by_policy) / max(1, len(by_policy)),
                refusal_rate=res.refusal_rate or 0.0,
                new_skill=res.accuracy.get(lexicon.NEW_SKILL, 0.0),
                old_tasks=report.old_task_accuracy(res.accuracy),
                train_s=train_s,
            )

        eval_model("aligned", str(chat_dir), 0.0)
        for method in cfg.methods:
            _say(f"finetuning with {method}")
            t0 = time.time()
            tcfg = TrainConfig(
                model=str(chat_dir),
                output_dir=str(out / "runs" / method),
                finetune="full",
                data=str(data["finetune"]),
                max_length=512,
                method=method,
                lambda_kl=cfg.lambda_kl,
                scorer=train_addr if method != "sft" else None,
                cache_path=str(out / "score_cache.sqlite"),  # keyed by the guard's fingerprint
                epochs=cfg.epochs,
                batch_size=cfg.batch_size,
                lr=cfg.lr,
                min_lr=cfg.lr / 20,
                warmup_ratio=0.05,
                seed=cfg.seed,
            )
            result = run_training(tcfg)
            finals[method] = result.final_dir
            eval_model(method, result.final_dir, time.time() - t0)

        if cfg.landscape:
            ls_models = {k: finals[k] for k in LANDSCAPE_MODELS if k in finals}
            _say(f"safety landscapes of {', '.join(ls_models)}")
            landscapes = draw_landscapes(judge, ls_models, out / "landscapes")

    ordered = [rows[k] for k in ("aligned", *cfg.methods) if k in rows]
    checks = report.acceptance(rows, guard_acc)
    if landscapes is not None:
        checks += report.landscape_checks(landscapes["models"], landscapes["grid"]["alpha_max"])
    path = report.write_report(out, ordered, checks, trajs, notes, landscapes)
    for name, res in results.items():
        with (out / f"responses_{name}.jsonl").open("w") as fh:
            for p, r, u in res.harmful_responses:
                fh.write(json.dumps({"set": "harmful", "prompt": p, "response": r, "unsafe": u}) + "\n")
            for task, p, r, ok in res.benign_responses:
                fh.write(json.dumps({"set": task, "prompt": p, "response": r, "correct": ok}) + "\n")
    summary: dict[str, Any] = {
        "guard_accuracy": guard_acc,
        "models": {k: vars(v) for k, v in rows.items()},
        "checks": [vars(c) for c in checks],
        "rs_kept": kept,
        "seconds": round(time.time() - t_start, 1),
        "report": str(path),
    }
    if landscapes is not None:
        summary["landscapes"] = {k: landscapes[k] for k in ("models", "plot", "grid", "seconds")}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(report.markdown_table(ordered))
    if landscapes is not None:
        print()
        print(landscapes["table"])
    print()
    print(report.checks_table(checks))
    print(f"\nreport: {path}  ({summary['seconds']:.0f} s)")
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
