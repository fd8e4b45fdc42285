"""`star-score-dataset`: score a whole dataset once, ahead of training (the published offline mode).

It reads the same recipe as `star-train` (trainee tokenizer, data, cut spacing), so the cuts it asks
for are exactly the ones training needs, and writes a JSONL that `scores_file` reads back; it also
fills the recipe's score cache unless told not to.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from star_contract.cli_errors import USER_ERRORS, fail
from trainer_client.data import build_examples, load_conversations
from trainer_client.scoring.cache import ScoreCache
from trainer_client.scoring.prefetch import ScoreFetcher
from trainer_client.scoring.scores_file import score_record, verdict_record
from trainer_client.scoring.select import scorer_from
from trainer_client.train.config import add_recipe_arguments, load_config


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="star-score-dataset",
        description="Precompute STAR scores (and, with --verdicts, whole-response verdicts) for every "
        "example of a training recipe's dataset and write them to a JSONL usable as the recipe's "
        "scores_file.",
    )
    add_recipe_arguments(ap, config_required=True)
    ap.add_argument("--out", required=True, help="JSONL file to write")
    ap.add_argument("--verdicts", action="store_true", help="also store Judge verdicts (for method rs)")
    ap.add_argument("--batch", type=int, default=64, help="requests per scorer call (default 64)")
    ap.add_argument("--no-cache", action="store_true", help="neither read nor fill the recipe's score cache")
    return ap


async def _run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer

    cfg = load_config(args.config, [*args.overrides, "scores_file=null"])
    if not (cfg.star.scorer or cfg.star.scorers):
        raise ValueError("the recipe names no scorer (set scorer=host:port or local:GUARD_DIR, or scorers)")
    tok = AutoTokenizer.from_pretrained(cfg.trainee.model)
    convs = load_conversations(cfg.dataset.data, cfg.dataset.data_split, cfg.dataset.max_examples)
    examples = build_examples(tok, convs, **cfg.example_options())
    cache = None if args.no_cache or not cfg.resolved_cache_path else ScoreCache(cfg.resolved_cache_path)
    scorer = scorer_from(
        None,
        cfg.star.scorer,
        cfg.star.guard_preset,
        cfg.star.scorers,
        cfg.star.combine,
        deadline_s=cfg.star.scorer_deadline_s,
    )()
    fp = (await scorer.info()).fingerprint
    fetcher = ScoreFetcher(scorer, fp, cache)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with open(args.out, "w", encoding="utf-8") as out, tqdm(total=len(examples), desc="scoring") as bar:
        for start in range(0, len(examples), args.batch):
            chunk = examples[start : start + args.batch]
            got = await fetcher.fetch(chunk, star=True, verdicts=args.verdicts)
            for ex, sc in zip(chunk, got, strict=True):
                for turn, s in zip(ex.turns, sc.scores, strict=True):
                    out.write(json.dumps(score_record(fp, turn.request, s)) + "\n")
                    written += 1
                if args.verdicts:
                    conv = ex.turns[-1].request.conversation
                    out.write(json.dumps(verdict_record(fp, conv, 1.0 - sc.keep)) + "\n")
            bar.update(len(chunk))
    await scorer.close()
    print(
        json.dumps(
            {
                "out": args.out,
                "records": written,
                "guard_requests": fetcher.scored_requests,
                "fingerprint": fp,
            }
        )
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(_run(args))
    except USER_ERRORS as e:
        return fail("star-score-dataset", e)


if __name__ == "__main__":
    raise SystemExit(main())
