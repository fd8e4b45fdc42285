"""`star-suffix-demo`: the paper's misleading-suffix experiment on the toy world.

Every harmful example of the finetuning mix ends with a claim of harmlessness, and the training signal
(rs verdicts, dss scores) comes from the fooled guard (`star_toy.fooled`), which models a known
weakness of real guards: its whole-response verdict is swayed by that trailing claim, its verdicts on the
prefixes before it are not. Each seed is one `star-demo` run (without landscapes); the models are judged
by the toy guard (not fooled) and by the written policy itself, never by the fooled guard alone.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from star_contract.cli_errors import RUN_ERRORS, fail
from star_toy.build import shipped_models

METHODS = ("sft", "rs", "dss")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="star-suffix-demo",
        description="The misleading-suffix experiment: finetune the toy aligned chat model with sft, rs "
        "and dss on a mix whose harmful examples end with a claim of harmlessness, with the fooled guard "
        "(fooled by that claim on whole responses only) giving the training signal; judge the models by "
        "the written policy and the toy guard. One star-demo run per seed into OUT/seed-N; the seeds' "
        "table goes to OUT/report.md and OUT/summary.json.",
    )
    ap.add_argument("--out", default="star-suffix-report", help="report directory (default: %(default)s)")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds, one run each (default 0,1,2)")
    ap.add_argument(
        "--fooled-guard",
        default=str(shipped_models() / "fooled_guard"),
        help="the fooled guard directory (default: the shipped one; rebuild with "
        "`star-toy-build --only fooled-guard --out DIR`, giving DIR/fooled_guard)",
    )
    ap.add_argument("--models", default=str(shipped_models()), help="directory with guard/ and chat/")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of sft,rs,dss")
    ap.add_argument("--harmful-ratio", type=float, default=0.1, help="harmful share of the mix (0.1)")
    ap.add_argument("--finetune-size", type=int, default=400, help="examples in the mix (default 400)")
    ap.add_argument("--epochs", type=int, default=8, help="finetuning epochs (default 8)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads, trainer and scorers each (1)")
    return ap


def seed_row(seed: int, summary: dict[str, Any]) -> dict[str, Any]:
    """One seed's harmful rates (policy and toy guard) per model, what rs kept, and whether dss < rs."""
    models = summary["models"]
    row: dict[str, Any] = {
        "seed": seed,
        "policy": {k: m["policy_harmful_rate"] for k, m in models.items()},
        "guard": {k: m["harmful_rate"] for k, m in models.items()},
        "rs_kept": summary.get("rs_kept", {}),
    }
    if "rs" in models and "dss" in models:
        dss, rs = models["dss"]["policy_harmful_rate"], models["rs"]["policy_harmful_rate"]
        row["dss_below_rs_policy"] = dss < rs
    return row


def report_table(rows: list[dict[str, Any]], methods: tuple[str, ...]) -> str:
    """Markdown: per seed, each model's policy-judged (toy-guard-judged) harmful rate and dss < rs."""
    names = ["aligned", *methods]
    head = "| seed | " + " | ".join(names) + " | dss < rs (policy) |"
    lines = [head, "|---" * (len(names) + 2) + "|"]
    for r in rows:
        cells = [f"{r['policy'][n]:.3f} ({r['guard'][n]:.3f})" for n in names if n in r["policy"]]
        lines.append(f"| {r['seed']} | " + " | ".join(cells) + f" | {r.get('dss_below_rs_policy', '-')} |")
    return "\n".join(lines)


def run(args: argparse.Namespace, seeds: list[int], methods: tuple[str, ...], command: str) -> dict[str, Any]:
    """Measure the fooled guard, then one demo run per seed; writes OUT/report.md and OUT/summary.json."""
    from star_toy.demo import DemoConfig
    from star_toy.demo import run as demo_run
    from star_toy.fooled import suffix_rates

    t0 = time.time()
    fooled, out = Path(args.fooled_guard), Path(args.out)
    if not (fooled / "config.json").is_file():
        raise ValueError(f"{fooled} is not a model directory; build it: star-toy-build --only fooled-guard")
    rates = suffix_rates(fooled)
    print(f"[star-suffix-demo] fooled guard on held-out misleading-suffix responses: {json.dumps(rates)}",
          file=sys.stderr, flush=True)  # fmt: skip
    rows = []
    for seed in seeds:
        cfg = DemoConfig(
            out=str(out / f"seed-{seed}"), models=args.models, train_guard=str(fooled), methods=methods,
            harmful_ratio=args.harmful_ratio, harmful_shapes=("misleading_suffix",),
            finetune_size=args.finetune_size, epochs=args.epochs, threads=args.threads, seed=seed,
            landscape=False,
        )  # fmt: skip
        rows.append(seed_row(seed, demo_run(cfg, f"{command} (seed {seed})")))
    table = report_table(rows, methods)
    held = [r["dss_below_rs_policy"] for r in rows if "dss_below_rs_policy" in r]
    verdict = f"dss < rs (policy judge) on {sum(held)} of {len(held)} seeds"
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(
        f"# Misleading-suffix experiment\n\nCommand: `{command}`\n\nFooled guard ({fooled}) on held-out "
        f"misleading-suffix responses: {json.dumps(rates)}\n\nHarmful rate on held-out hazard requests, by "
        f"the written policy (by the toy guard in brackets):\n\n{table}\n\n{verdict}\n"
    )
    summary = {"command": command, "fooled_guard": rates, "seeds": rows, "verdict": verdict,
               "seconds": round(time.time() - t0, 1)}  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\n{table}\n\n{verdict}\nreport: {out / 'report.md'}")
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        seeds = []
    problems = [
        (bool(seeds), "--seeds must be a comma-separated list of integers"),
        (bool(methods) and all(m in METHODS for m in methods), "--methods: choose from sft,rs,dss"),
        (0.0 < args.harmful_ratio <= 1.0, "--harmful-ratio must be in (0, 1]"),
        (args.finetune_size >= 10 and args.epochs >= 1 and args.threads >= 1,
         "--finetune-size must be >= 10, --epochs and --threads >= 1"),
    ]  # fmt: skip
    for ok, msg in problems:
        if not ok:
            print(f"star-suffix-demo: error: {msg}", file=sys.stderr)
            return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    words = argv if argv is not None else sys.argv[1:]
    command = " ".join(["star-suffix-demo", *(shlex.quote(a) for a in words)])
    try:
        run(args, seeds, methods, command)
    except RUN_ERRORS as exc:
        return fail("star-suffix-demo", exc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
