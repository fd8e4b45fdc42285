"""The stages of `star-demo` (star_toy/demo.py runs them in order): its settings, the world's data,
the guard's accuracy, what rs keeps, STAR trajectories, finetuning, evaluation and the outputs."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from star_toy import datasets, generators, lexicon, policy
from star_toy.build import shipped_models

METHODS = ("sft", "rs", "dss")
Judge = Callable[[list[Any]], list[Any]]
"""Whole-conversation verdicts from a running scorer (its Judge RPC)."""
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


def say(msg: str) -> None:
    """One line of progress on stderr."""
    print(f"[star-demo] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Setup:
    """What every stage of a demo run reads: the models, the world's data and the evaluation sets."""

    cfg: DemoConfig
    out: Path
    guard_dir: Path
    chat_dir: Path
    train_guard: Path
    data: dict[str, Path]
    mix: list[Any]
    harmful: list[Any]
    benign: list[Any]


def prepare(cfg: DemoConfig) -> Setup:
    """Check the model directories and write the world's datasets under OUT/data."""
    from star_toy.eval_sets import toy_sets

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
    harmful, benign = toy_sets()
    return Setup(
        cfg, out, guard_dir, chat_dir, train_guard, data, datasets.finetune_mix(wcfg), harmful, benign
    )


def guard_accuracy(judge: Judge) -> float:
    """The toy guard's verdict accuracy, through the running service, on 600 held-out judged prefixes."""
    from star_contract.types import Conversation
    from star_toy.guard import GuardBuildConfig, guard_data

    _, held = guard_data(GuardBuildConfig())
    held = held[:600]
    verdicts = [v for i in range(0, len(held), 64) for v in judge(
        [Conversation.from_pair(p.prompt, p.prefix) for p in held[i : i + 64]])]  # fmt: skip
    acc = sum(v.unsafe == p.unsafe for v, p in zip(verdicts, held, strict=True)) / len(held)
    say(f"toy guard verdict accuracy on {len(held)} held-out prefixes: {acc:.3f}")
    return acc


def rs_kept(training_judge: Judge, mix: list[Any]) -> dict[str, str]:
    """What a whole-response verdict (rs) keeps of the mix's harmful examples, per harmful shape."""
    from star_contract.types import Conversation

    harm_ex = [e for e in mix if e.kind.startswith("harmful:")]
    verdicts = (
        training_judge([Conversation.from_pair(e.prompt, e.response) for e in harm_ex]) if harm_ex else []
    )
    kept: dict[str, str] = {}
    for shape in generators.HARMFUL_SHAPES:
        idx = [i for i, e in enumerate(harm_ex) if e.kind == f"harmful:{shape}"]
        if idx:
            kept[shape] = f"{sum(not verdicts[i].unsafe for i in idx)} of {len(idx)} harmful examples kept"
    return kept


def trajectories(client: Any, mix: list[Any]) -> list[Any]:
    """STAR trajectories (a cut every 5 words) of one training response per harmful shape and one of
    the new skill, from the training guard."""
    from star_contract.types import Conversation, CutKind, CutSpec, ScoreRequest
    from star_toy import report

    picks = [next(e for e in mix if e.kind == f"harmful:{s}") for s in generators.HARMFUL_SHAPES
             if any(e.kind == f"harmful:{s}" for e in mix)]  # fmt: skip
    picks.append(next(e for e in mix if e.kind == lexicon.NEW_SKILL))
    return [
        report.Trajectory(e.kind, e.prompt, e.response, client.score(
            ScoreRequest(Conversation.from_pair(e.prompt, e.response), CutSpec(CutKind.WORDS, 5))))
        for e in picks
    ]  # fmt: skip


def evaluate_model(setup: Setup, judge: Judge, name: str, path: str, train_s: float) -> tuple[Any, Any]:
    """The model's EvalResult on the held-out sets (judged by the toy guard) and its report row (with
    the harmful rate by the world's written policy too)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from star_toy import report
    from trainer_client.evaluation.runner import EvalConfig, evaluate
    from trainer_client.generation import GenerationConfig
    from trainer_client.judges import VerdictJudge

    say(f"evaluating {name} on {len(setup.harmful)} hazard requests and {len(setup.benign)} benign items")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    gen = EvalConfig(GenerationConfig(max_new_tokens=setup.cfg.max_new_tokens, batch_size=32))
    res = evaluate(model, tok, setup.harmful, setup.benign, VerdictJudge(judge, name="toy-guard"), gen)
    by_policy = [policy.policy_verdict(p, r).unsafe for p, r, _ in res.harmful_responses]
    row = report.MethodRow(
        name=name,
        harmful_rate=res.harmful_rate or 0.0,
        policy_harmful_rate=sum(by_policy) / max(1, len(by_policy)),
        refusal_rate=res.refusal_rate or 0.0,
        new_skill=res.accuracy.get(lexicon.NEW_SKILL, 0.0),
        old_tasks=report.old_task_accuracy(res.accuracy),
        train_s=train_s,
    )
    return res, row


def finetune(setup: Setup, method: str, train_addr: str) -> str:
    """Finetune the aligned chat model in full with `method` on the harmful mix; the final directory."""
    from trainer_client.train import run_training
    from trainer_client.train.config import build_config

    cfg = setup.cfg
    say(f"finetuning with {method}")
    tcfg = build_config(
        {
            "model": str(setup.chat_dir),
            "output_dir": str(setup.out / "runs" / method),
            "finetune": "full",
            "data": str(setup.data["finetune"]),
            "max_length": 512,
            "method": method,
            "lambda_kl": cfg.lambda_kl,
            "scorer": train_addr if method != "sft" else None,
            "cache_path": str(setup.out / "score_cache.sqlite"),  # keyed by the guard's fingerprint
            "epochs": cfg.epochs,
            "batch_size": cfg.batch_size,
            "lr": cfg.lr,
            "min_lr": cfg.lr / 20,
            "warmup_ratio": 0.05,
            "seed": cfg.seed,
        }
    )
    return run_training(tcfg).final_dir


def write_outputs(
    setup: Setup,
    rows: dict[str, Any],
    results: dict[str, Any],
    guard_acc: float,
    trajs: list[Any],
    notes: dict[str, Any],
    landscapes: dict[str, Any] | None,
) -> dict[str, Any]:
    """The report (with the acceptance checks measured), each model's responses as JSONL, the tables
    on stdout; returns the summary (without its run time)."""
    from star_toy import report

    out = setup.out
    ordered = [rows[k] for k in ("aligned", *setup.cfg.methods) if k in rows]
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
        "rs_kept": notes["rs_kept"],
        "report": str(path),
    }
    if landscapes is not None:
        summary["landscapes"] = {k: landscapes[k] for k in ("models", "plot", "grid", "seconds")}
    print(report.markdown_table(ordered))
    if landscapes is not None:
        print()
        print(landscapes["table"])
    print()
    print(report.checks_table(checks))
    return summary
