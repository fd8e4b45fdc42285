"""`star-eval`: harmful rate, keyword-refusal rate and task accuracy of a chat model.

star-eval --model out/dss --scorer 127.0.0.1:50051 --harmful advbench.csv --benign items.jsonl
star-eval --model out/dss --scorer 127.0.0.1:50051 --harmful advbench   (read from the installed pyrit)
star-eval --model star_toy/models/chat --guard star_toy/models/guard --toy
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from star_contract.cli_errors import RUN_ERRORS, USER_ERRORS, fail
from star_contract.model_dir import require_model_dir
from trainer_client.evaluation.loaders import (
    BenignItem,
    HarmfulPrompt,
    load_benign_items,
    load_harmful_prompts,
)
from trainer_client.evaluation.runner import (
    EvalConfig,
    EvalResult,
    evaluate,
)
from trainer_client.evaluation.sources import HELP as HARMFUL_HELP
from trainer_client.evaluation.sources import load_harmful
from trainer_client.generation import GenerationConfig
from trainer_client.judges import VerdictJudge, guard_service_judge, in_process_guard_judge


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="star-eval",
        description="Greedy generation on held-out harmful prompts and benign items; reports the harmful "
        "rate (share of responses the guard's Judge calls unsafe), the keyword-refusal rate and task "
        "accuracy. Prints a table, then one JSON object as the last line.",
    )
    ap.add_argument(
        "--model", required=True, help="chat model directory (Hugging Face format, with a chat template)"
    )
    ap.add_argument("--harmful", help=HARMFUL_HELP)
    ap.add_argument(
        "--benign",
        help="benign items JSONL: `prompt` (or `messages`), `answer` (a phrase a correct "
        "response contains) and optional `task`",
    )
    ap.add_argument(
        "--toy",
        action="store_true",
        help="use the toy world's held-out harmful prompts and benign items (for the toy models)",
    )
    judge = ap.add_mutually_exclusive_group()
    judge.add_argument("--scorer", help="address (host:port) of a running scorer service to judge with")
    judge.add_argument("--guard", help="guard directory to judge with in this process (no server)")
    ap.add_argument(
        "--preset", default="llama-guard-3", help="guard preset for --guard (default: llama-guard-3)"
    )
    ap.add_argument(
        "--limit",
        type=int,
        default=None,
        help="use only the first N harmful prompts and the first N benign items of each task",
    )
    ap.add_argument(
        "--max-new-tokens", type=int, default=128, help="tokens generated per response (default 128)"
    )
    ap.add_argument("--batch-size", type=int, default=16, help="prompts per generate call (default 16)")
    ap.add_argument("--system-prompt", default=None, help="system message put before every prompt")
    ap.add_argument("--device", default="cpu", help="torch device for the model and an in-process guard")
    ap.add_argument("--out", help="write the summary JSON here")
    ap.add_argument("--responses", help="write every prompt, response and judgement here as JSONL")
    return ap


TOY_DATA = Path(__file__).resolve().parent.parent.parent / "star_toy" / "models" / "data"
"""The toy world's held-out sets as shipped with the toy models (written by `star-toy-build`), read as
files: the evaluation tools do not import the toy world."""


def toy_sets() -> tuple[list[HarmfulPrompt], list[BenignItem]]:
    """The toy world's held-out evaluation sets, read from the shipped files."""
    return load_harmful_prompts(TOY_DATA / "eval_harmful.jsonl"), load_benign_items(
        TOY_DATA / "eval_benign.jsonl"
    )


def per_task(items: list[BenignItem], n: int) -> list[BenignItem]:
    """The first `n` items of each task, in file order."""
    seen: dict[str, int] = {}
    out = []
    for it in items:
        seen[it.task] = seen.get(it.task, 0) + 1
        if seen[it.task] <= n:
            out.append(it)
    return out


def format_table(result: EvalResult) -> str:
    """A short human-readable table of one result."""
    lines = [f"{'metric':<28} {'value':>8} {'n':>6}"]
    if result.harmful_rate is not None:
        lines.append(f"{'harmful rate (judge)':<28} {result.harmful_rate:>8.3f} {result.n_harmful:>6}")
    if result.refusal_rate is not None:
        lines.append(f"{'refusal rate (keywords)':<28} {result.refusal_rate:>8.3f} {result.n_harmful:>6}")
    for task, acc in sorted(result.accuracy.items()):
        lines.append(f"{'accuracy: ' + task:<28} {acc:>8.3f} {result.n_benign[task]:>6}")
    return "\n".join(lines)


def write_responses(path: str, result: EvalResult) -> None:
    with Path(path).open("w") as fh:
        for prompt, response, unsafe in result.harmful_responses:
            fh.write(
                json.dumps({"set": "harmful", "prompt": prompt, "response": response, "unsafe": unsafe})
                + "\n"
            )
        for task, prompt, response, ok in result.benign_responses:
            fh.write(json.dumps({"set": task, "prompt": prompt, "response": response, "correct": ok}) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        harmful: list[HarmfulPrompt] = []
        benign: list[BenignItem] = []
        if args.toy:
            harmful, benign = toy_sets()
        if args.harmful:
            harmful = load_harmful(args.harmful)
        if args.benign:
            benign = load_benign_items(args.benign)
        if args.limit:
            harmful, benign = harmful[: args.limit], per_task(benign, args.limit)
        if not harmful and not benign:
            raise ValueError("nothing to evaluate: give --harmful and/or --benign (or --toy)")
        require_model_dir(args.model, "--model")
        if args.max_new_tokens < 1 or args.batch_size < 1:
            raise ValueError("--max-new-tokens and --batch-size must be >= 1")
    except USER_ERRORS as exc:
        return fail("star-eval", exc)

    judge: VerdictJudge | None = None
    try:
        if args.scorer:
            judge = guard_service_judge([a for a in args.scorer.split(",") if a])
        elif args.guard:
            judge = in_process_guard_judge(args.guard, args.preset, args.device)
        elif harmful:
            print("star-eval: no --scorer or --guard: reporting keyword refusals only", file=sys.stderr)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(args.model)
        model = AutoModelForCausalLM.from_pretrained(args.model).to(args.device).eval()
        cfg = EvalConfig(GenerationConfig(args.max_new_tokens, args.batch_size, args.system_prompt))
        result = evaluate(model, tok, harmful, benign, judge, cfg)
    except RUN_ERRORS as exc:
        return fail("star-eval", exc)
    finally:
        if judge is not None:
            judge.close()
    print(format_table(result))
    summary = {"model": args.model, **result.summary()}
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    if args.responses:
        write_responses(args.responses, result)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
