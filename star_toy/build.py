"""`star-toy-build`: (re)build the toy guard, the toy aligned chat model and the toy datasets.

Everything is seeded, so the same command on the same library versions rebuilds the same models. The
built models ship in `star_toy/models/` so the demo starts at once; this command is how they
were made.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

MODELS_DIR = Path(__file__).resolve().parent / "models"


def shipped_models() -> Path:
    """The directory holding the shipped toy models (`guard/`, `chat/`, `data/`)."""
    return MODELS_DIR


def _bar(total: int, desc: str) -> tuple[Callable[[int, float], None], Any]:
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit="step", file=sys.stderr)

    def update(step: int, loss: float) -> None:
        bar.update(1)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss:.3f}")

    return update, bar


def check_guard(guard_dir: Path) -> dict[str, Any]:
    """Verdict accuracy of the guard on held-out judged prefixes."""
    from star_toy.guard import GuardBuildConfig, guard_data, verdict_accuracy

    _, held = guard_data(GuardBuildConfig())
    acc = verdict_accuracy(guard_dir, held)
    return {
        "verdict_accuracy": acc.accuracy,
        "n": acc.n,
        "false_negatives": acc.false_negatives,
        "false_positives": acc.false_positives,
        "accuracy_by_label": acc.by_kind,
    }


def check_chat(chat_dir: Path, guard_dir: Path) -> dict[str, Any]:
    """Harmful rate (judged by the toy guard), refusal rate and accuracies of the aligned model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from star_toy.eval_sets import toy_sets
    from trainer_client.evaluation.runner import EvalConfig, evaluate
    from trainer_client.generation import GenerationConfig
    from trainer_client.judges import in_process_guard_judge

    harmful, benign = toy_sets()
    tok = AutoTokenizer.from_pretrained(str(chat_dir))
    model = AutoModelForCausalLM.from_pretrained(str(chat_dir)).eval()
    cfg = EvalConfig(GenerationConfig(max_new_tokens=96, batch_size=32))
    return evaluate(model, tok, harmful, benign, in_process_guard_judge(str(guard_dir)), cfg).summary()


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="star-toy-build",
        description="Rebuild the toy safety world's models and datasets reproducibly: a Llama-Guard-shaped "
        "toy guard trained on honestly judged response prefixes, a toy aligned chat model, and the "
        "finetuning mix with its held-out evaluation sets. Writes OUT/guard, OUT/chat, OUT/data and "
        "OUT/BUILD.json (the acceptance numbers).",
    )
    ap.add_argument(
        "--out", default=str(MODELS_DIR), help=f"output directory (default: the shipped {MODELS_DIR})"
    )
    ap.add_argument(
        "--only",
        choices=["guard", "chat", "data", "check", "weak-guard", "fooled-guard"],
        help="build just one part ('check' re-measures existing models without training; 'weak-guard' "
        "builds the optional smaller guard into OUT/weak_guard, for `star-demo --train-guard`; "
        "'fooled-guard' builds OUT/fooled_guard, a guard whose whole-response verdict a trailing claim "
        "of harmlessness fools, and measures it into OUT/fooled_guard/BUILD.json)",
    )
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    import torch

    from star_toy import datasets
    from star_toy.chat import ChatBuildConfig, build_chat
    from star_toy.fooled import check_fooled_guard
    from star_toy.guard import GuardBuildConfig, build_guard, fooled_guard_config, weak_guard_config

    if args.threads < 0:
        print("star-toy-build: error: --threads must be >= 0", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    guard_dir, chat_dir, data_dir = out / "guard", out / "chat", out / "data"
    report: dict[str, Any] = {}
    t0 = time.time()
    if args.only in (None, "data"):
        paths = datasets.write_datasets(data_dir)
        print(f"datasets: {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    if args.only in (None, "guard"):
        gcfg = GuardBuildConfig()
        update, bar = _bar(gcfg.fit.steps, "toy guard")
        build_guard(guard_dir, gcfg, update)
        bar.close()
    if args.only == "weak-guard":
        wcfg = weak_guard_config()
        update, bar = _bar(wcfg.fit.steps, "weak toy guard")
        build_guard(out / "weak_guard", wcfg, update)
        bar.close()
        print(json.dumps({"weak_guard": check_guard(out / "weak_guard")}))
    if args.only == "fooled-guard":
        fcfg, fdir = fooled_guard_config(), out / "fooled_guard"
        update, bar = _bar(fcfg.fit.steps, "fooled toy guard")
        build_guard(fdir, fcfg, update)
        bar.close()
        toy = guard_dir if (guard_dir / "config.json").is_file() else MODELS_DIR / "guard"
        checked = {**check_fooled_guard(fdir, toy), "seconds": round(time.time() - t0, 1)}
        (fdir / "BUILD.json").write_text(json.dumps(checked, indent=2) + "\n")
        print(json.dumps({"fooled_guard": checked}))
    if args.only in (None, "chat"):
        ccfg = ChatBuildConfig()
        update, bar = _bar(ccfg.fit.steps, "toy chat model")
        build_chat(chat_dir, ccfg, update)
        bar.close()
    if args.only in (None, "check"):
        for d in (guard_dir, chat_dir):
            if not d.is_dir():
                print(f"star-toy-build: error: {d} does not exist; build it first", file=sys.stderr)
                return 1
        report["guard"] = check_guard(guard_dir)
        report["chat"] = check_chat(chat_dir, guard_dir)
        report["seconds"] = round(time.time() - t0, 1)
        report["versions"] = {"torch": torch.__version__, "transformers": _version("transformers")}
        (out / "BUILD.json").write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(report))
    return 0


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


if __name__ == "__main__":
    raise SystemExit(main())
