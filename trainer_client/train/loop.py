"""The finetuning loop on accelerate: setup -> (reference precompute) -> fit -> save.

One process per device (`accelerate launch` or `torchrun` for several); each process trains on its own
shard of every epoch's permutation and scores that shard itself through its own prefetcher. How the
model is distributed (a whole copy per process, or FSDP2 shards) is the engine's (train/engine.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from star_contract.model_dir import require_model_dir
from trainer_client.data import Batch, build_examples, load_conversations
from trainer_client.loss import LossOutput
from trainer_client.scoring.cache import ScoreCache
from trainer_client.scoring.prefetch import AsyncScorer, ExampleScores
from trainer_client.scoring.select import scorer_from
from trainer_client.train.batching import batch_loss
from trainer_client.train.checkpoint import checkpoint_state, latest_checkpoint
from trainer_client.train.config import TrainConfig
from trainer_client.train.engine import engine_for
from trainer_client.train.metrics import guard_disagreement, run_summary, step_row
from trainer_client.train.model_setup import (
    allow_new_precision,
    enable_activation_checkpointing,
    load_trainee,
    optimizer_and_schedule,
    with_lora,
)
from trainer_client.train.reference import Reference
from trainer_client.train.sampler import EpochSampler, MicroBatch
from trainer_client.train.star_batches import StarBatches


@dataclass(frozen=True)
class TrainResult:
    """What a run produced."""

    output_dir: str
    final_dir: str
    """The trained adapter (LoRA) or model, with the tokenizer."""
    steps: int
    """Optimizer steps taken in total (including those before a resume)."""
    finished: bool
    """False when the run stopped early (stop_after_steps)."""
    metrics: dict[str, float] = field(default_factory=dict)
    """Summary: means over the run's steps, wall time, scorer wait, guard requests sent."""


class Trainer:
    """One run: `setup()` loads everything and starts scoring ahead, `fit()` trains and returns a
    TrainResult, `close()` stops the prefetcher and the cache. The constructor only keeps the config."""

    def __init__(self, cfg: TrainConfig, scorer_factory: Callable[[], AsyncScorer] | None = None) -> None:
        self.cfg = cfg
        self.scorer_factory = scorer_factory
        self.cache: ScoreCache | None = None

    def setup(self) -> Trainer:
        """Load the data, tokenizer, trainee and reference, and start fetching scores (in the sampler's
        order, so the first batches' scores arrive while the models load). Closes what it opened on
        failure."""
        from accelerate import Accelerator
        from accelerate.utils import set_seed
        from transformers import AutoTokenizer

        cfg, scorer_factory = self.cfg, self.scorer_factory
        if cfg.optim.torch_threads:
            torch.set_num_threads(cfg.optim.torch_threads)
        allow_new_precision(cfg.optim.mixed_precision)
        self.acc = Accelerator(mixed_precision=cfg.optim.mixed_precision, cpu=not torch.cuda.is_available())
        self.engine = engine_for(cfg.optim, self.acc)
        set_seed(cfg.optim.seed)
        self.out = Path(cfg.run.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        require_model_dir(cfg.trainee.model, "model")
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.trainee.model)
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"the tokenizer in {cfg.trainee.model} has no chat template")
        tok = self.tokenizer
        self.pad_id = int(tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0))
        convs = load_conversations(cfg.dataset.data, cfg.dataset.data_split, cfg.dataset.max_examples)
        self.examples = build_examples(tok, convs, **cfg.example_options())
        if not self.examples:
            raise ValueError(
                f"{cfg.dataset.data} gave no trainable example (no assistant tokens within max_length)"
            )
        self.sampler = EpochSampler(
            len(self.examples),
            cfg.optim.batch_size,
            cfg.optim.grad_accum,
            cfg.optim.seed,
            self.acc.process_index,
            self.acc.num_processes,
        )
        self.ckpt = latest_checkpoint(self.out) if cfg.run.resume else None
        if cfg.run.resume and self.ckpt is None:
            raise ValueError(f"--resume: no checkpoint in {self.out / 'checkpoints'}")
        world = self.acc.num_processes
        self.start_step = (
            int(checkpoint_state(self.ckpt, cfg.optim.sharding, world)["step"]) if self.ckpt else 0
        )
        self.plan = self.sampler.plan(cfg.optim.epochs, self.start_step)
        self.cache = ScoreCache(cfg.resolved_cache_path) if cfg.resolved_cache_path else None
        # Scoring starts now, so the first batches' scores arrive while the models load.
        make = None
        if cfg.loss.method in ("dss", "rs"):
            make = scorer_factory or scorer_from(
                cfg.star.scores_file,
                cfg.star.scorer,
                cfg.star.guard_preset,
                cfg.star.scorers,
                cfg.star.combine,
                deadline_s=cfg.star.scorer_deadline_s,
            )
        self.star = StarBatches(
            self.examples,
            self.pad_id,
            cfg.loss.method,
            make,
            self.cache,
            cfg.star.prefetch_batches,
            delay_s=cfg.star.scorer_delay_s,
            in_order=True,
        )
        self.star.start([mb.indices for mb in self.plan])
        try:
            self._setup_model()
        except BaseException:
            self.close()
            raise
        return self

    def _setup_model(self) -> None:
        cfg = self.cfg
        model = load_trainee(cfg.trainee, self.engine.load_device)
        self.lora = cfg.trainee.finetune == "lora"
        needs_ref = cfg.loss.method == "dss" and cfg.loss.lambda_kl > 0
        self.reference = Reference.for_run(model, needs_ref, cfg.loss.reference, peft=self.lora)
        if self.lora:
            model = with_lora(cfg.trainee, model)
        if cfg.optim.activation_checkpointing:
            enable_activation_checkpointing(model)
        model = self.engine.wrap(model)
        if needs_ref and cfg.loss.reference == "precomputed":
            self.reference.precompute(
                cfg.trainee.model,
                model,  # with its adapter off, if it has one
                self.examples,
                self.pad_id,
                self.cache,
                self.acc.device,
                cfg.optim.batch_size,
                autocast=self.acc.autocast,  # the context `_loss` runs its forwards in
                precision=cfg.optim.mixed_precision,
                compute=self.engine.reference_compute(self.examples),
            )
            self.star.ref_lp = self.reference.logprobs
        model.train()
        self.total_steps = self.sampler.steps_per_epoch * cfg.optim.epochs
        optimizer, self.scheduler = optimizer_and_schedule(cfg.optim, model, self.total_steps)
        self.model, self.optimizer = self.engine.prepare(model, optimizer)
        if self.ckpt is not None:
            state = self.engine.load(self.ckpt, self.model, self.optimizer, self.scheduler, self.lora)
            assert int(state["step"]) == self.start_step

    # -- one micro-batch --
    def _loss(self, b: Batch) -> LossOutput:
        dev = self.acc.device
        ids, attn = b.input_ids.to(dev), b.attention_mask.to(dev)
        with self.acc.autocast():
            logits = self.model(input_ids=ids, attention_mask=attn).logits
        ref_logits = None
        if self.reference.needed and b.ref_logprobs is None:
            trainee = self.engine.trainee(self.model)
            ref_logits = self.reference.logits(trainee, ids, attn, self.acc.autocast)
        return batch_loss(self.cfg.loss, logits, ids, b, ref_logits)

    # -- the run --
    def fit(self) -> TrainResult:
        from tqdm.auto import tqdm

        cfg = self.cfg
        plan = self.plan
        steps: dict[int, list[MicroBatch]] = {}
        for mb in plan:
            steps.setdefault(mb.step, []).append(mb)
        metrics_path = self.out / "metrics.jsonl"
        mode = "a" if cfg.run.resume else "w"
        main = self.acc.is_main_process
        bar = tqdm(
            total=self.total_steps,
            initial=self.start_step,
            disable=not (cfg.run.progress and main),
            desc=cfg.loss.method,
        )
        rows: list[dict[str, float]] = []
        t_run = time.perf_counter()
        step = self.start_step
        finished = True
        with metrics_path.open(mode, encoding="utf-8") if main else nullcontext() as log:
            for step, group in sorted(steps.items()):
                row = self._step(step, group)
                rows.append(row)
                if log is not None:
                    log.write(json.dumps(row) + "\n")
                    log.flush()
                bar.update(1)
                bar.set_postfix(
                    loss=f"{row['loss']:.3f}",
                    star=f"{row['mean_star']:.2f}",
                    wait=f"{row['scorer_wait_s']:.2f}",
                )
                done = step + 1
                if cfg.run.save_every and done % cfg.run.save_every == 0 and done < self.total_steps:
                    self._save(done, group[-1].epoch)
                if (
                    cfg.run.stop_after_steps is not None
                    and done >= cfg.run.stop_after_steps
                    and done < self.total_steps
                ):
                    self._save(done, group[-1].epoch)
                    finished = False
                    break
        bar.close()
        done = step + 1 if rows else self.start_step
        wall = time.perf_counter() - t_run
        final_dir = self.out / "final"
        if finished:
            self._save(done, cfg.optim.epochs - 1)
            self.engine.save_final(final_dir, self.model, self.tokenizer, self.lora)
        sent = self.star.guard_requests
        summary = run_summary(rows, wall, sent)
        if main:
            (self.out / "summary.json").write_text(
                json.dumps(
                    {"steps": done, "finished": finished, **summary, "config": cfg.to_dict()}, indent=2
                )
            )
        self.close()
        return TrainResult(str(self.out), str(final_dir), done, finished, summary)

    def _step(self, step: int, group: list[MicroBatch]) -> dict[str, float]:
        cfg = self.cfg
        t0 = time.perf_counter()
        wait = 0.0
        ready = 0
        stats: list[LossOutput] = []
        got: list[ExampleScores] = []
        tokens = 0
        for k, mb in enumerate(group):
            b, scores, waited = self.star.batch(mb.indices)
            wait += waited
            ready += self.star.last_ready
            got.extend(scores)
            tokens += int(b.attention_mask.sum())
            with self.engine.accumulating(self.model, last=k == len(group) - 1):
                out = self._loss(b)
                self.engine.backward(out.loss / len(group))
            stats.append(out)
        if cfg.optim.max_grad_norm > 0:
            self.engine.clip(self.model, cfg.optim.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if cfg.run.step_sleep_s:
            time.sleep(cfg.run.step_sleep_s)
        t1 = time.perf_counter()
        lr = float(self.scheduler.get_last_lr()[0])
        stats, tokens = self.engine.global_stats(stats, tokens)
        row = step_row(step, group[-1].epoch, lr, stats, tokens, wait, t0, t1)
        if self.star.prefetcher is not None:
            row["scores_ready"] = ready / len(group)
        return {**row, **guard_disagreement(got, verdicts=cfg.loss.method == "rs")}

    def _save(self, step: int, epoch: int) -> None:
        position = {
            "epoch": epoch,
            "total_steps": self.total_steps,
            "steps_per_epoch": self.sampler.steps_per_epoch,
        }
        self.engine.save(self.out, step, self.model, self.optimizer, self.scheduler, self.lora, position)

    def close(self) -> None:
        """Stop the prefetcher and close the score cache (idempotent)."""
        star = getattr(self, "star", None)
        if star is not None:
            star.close()
        elif self.cache is not None:
            self.cache.close()
        self.cache = None


def run_training(cfg: TrainConfig, scorer_factory: Callable[[], AsyncScorer] | None = None) -> TrainResult:
    """Train as `cfg` says and return where the results are. `scorer_factory` overrides the configured
    scorer (it is called on the prefetcher's event loop thread)."""
    trainer = Trainer(cfg, scorer_factory).setup()
    try:
        return trainer.fit()
    finally:
        trainer.close()
