"""StarDSSTrainer: TRL's SFTTrainer with the STAR-DSS loss of `star-train` (trainer_client/loss.py).

Conventions, chosen so that a run equals a `star-train` run with the same data, seed and
hyperparameters (tests/test_trl_integration.py):
- tokens and labels: `star-train`'s (see dataset.py); the last assistant turn is labelled, every
  assistant turn with `assistant_only_loss=True`;
- order: `star-train`'s seeded permutation per epoch (`StarEpochSampler`), so the scores of the next
  `prefetch_batches` micro-batches are fetched while the current one trains;
- loss: each micro-batch's own mean over its label tokens, divided by the number of micro-batches of
  the optimizer step (`loss_is_scaled_for_ga = False`), as in star-train. TRL's plain SFT instead
  divides the summed CE by the label tokens of the whole accumulation step (`num_items_in_batch`);
- reference: a frozen copy made before TRL patches the model, the disabled adapter of a peft model,
  a `ref_model` passed in, or log-probs precomputed once under the run's autocast;
- FSDP2 through accelerate (fsdp.py): the precomputed reference is computed by the sharded model when
  training starts, the examples split across the processes (star-train's `ShardedReferenceCompute`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any, cast

import torch
from transformers import TrainerCallback
from trl import SFTConfig, SFTTrainer

from trainer_client.data import Example, build_examples
from trainer_client.integrations.trl.collator import StarDataCollator
from trainer_client.integrations.trl.config import StarDSSConfig
from trainer_client.integrations.trl.dataset import (
    STAR_INDEX,
    check_trl_options,
    conversations,
    tokenised_rows,
)
from trainer_client.integrations.trl.fsdp import check_fsdp, shard_cpu_processes
from trainer_client.integrations.trl.sampler import StarEpochSampler, batch_order
from trainer_client.loss import LossOutput, compute_loss, shift_for_causal_lm
from trainer_client.scoring.cache import ScoreCache
from trainer_client.scoring.select import scorer_from
from trainer_client.train.batching import batch_loss
from trainer_client.train.fsdp_reference import ShardedReferenceCompute
from trainer_client.train.metrics import step_row
from trainer_client.train.reference import Compute, Reference, is_peft, reference_logprobs
from trainer_client.train.star_batches import StarBatches


class StarDSSTrainer(SFTTrainer):
    """`SFTTrainer` trained with STAR-DSS (or `rs` / `sft`): pass `star=StarDSSConfig(...)` or just
    `scorer="host:port"`. Everything else is SFTTrainer's (args, peft_config, callbacks, ...)."""

    loss_is_scaled_for_ga = False  # type: ignore[assignment]
    """compute_loss returns the micro-batch mean; the Trainer divides it by the step's micro-batches."""

    def __init__(
        self,
        model: Any,
        args: SFTConfig | None = None,
        data_collator: Any = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        *,
        star: StarDSSConfig | None = None,
        scorer: str | None = None,
        ref_model: Any = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(args, SFTConfig):
            raise TypeError("StarDSSTrainer needs args=SFTConfig(output_dir=..., ...)")
        if star is not None and scorer is not None:
            raise ValueError("name the scorer in star=StarDSSConfig(scorer=...) or as scorer=..., not both")
        star = star or StarDSSConfig(scorer=scorer)
        check_trl_options(args, data_collator)
        if train_dataset is None:
            raise ValueError("`train_dataset` is required")
        adapter = kwargs.get("peft_config") is not None or is_peft(model)
        check_fsdp(args, star.method, star.lambda_kl, star.reference, adapter, ref_model)  # before loading
        model, tokenizer = _model_and_tokenizer(model, args, processing_class)
        tokenizer.pad_token = args.pad_token or tokenizer.pad_token or tokenizer.eos_token
        pad_id = int(tokenizer.pad_token_id)
        self.star = star
        self.star_cfg = star.as_train_config(str(model.name_or_path), str(args.output_dir))
        opts = star.example_options(args.max_length or 2**62, bool(args.assistant_only_loss))
        self.star_examples: list[Example] = build_examples(tokenizer, conversations(train_dataset), **opts)
        if not self.star_examples:
            raise ValueError("train_dataset gave no trainable example (no assistant token within max_length)")
        cache_path = self.star_cfg.resolved_cache_path
        cache = ScoreCache(cache_path) if cache_path and star.method != "sft" else None
        make = None
        if star.method != "sft":
            make = scorer_from(
                star.scores_file,
                star.scorer,
                star.guard_preset,
                star.scorers,
                star.combine,
                deadline_s=star.scorer_deadline_s,
            )
        self._star = StarBatches(
            self.star_examples,
            pad_id,
            star.method,
            make,
            cache,
            star.prefetch_batches,
            delay_s=star.scorer_delay_s,
        )
        self.star_rows: list[dict[str, float]] = []
        """One row per optimizer step, as star-train's metrics.jsonl (loss, weighted_ce, kl, ...)."""
        self._open: list[tuple[int, LossOutput, int, float]] = []
        try:
            # Scoring starts now, in the order the sampler will use, while the rest is set up.
            self._star.start(_order(len(self.star_examples), args))
            peft = kwargs.get("peft_config") is not None or is_peft(model)
            needs_ref = star.method == "dss" and star.lambda_kl > 0
            # before TRL patches the model's forward
            self._reference = Reference.for_run(model, needs_ref, star.reference, peft, given=ref_model)
            targs = copy.copy(args)  # TRL must not re-derive labels: they are star-train's
            targs.assistant_only_loss, targs.completion_only_loss, targs.shuffle_dataset = False, None, False
            from datasets import Dataset

            super().__init__(
                model,
                args=targs,
                data_collator=StarDataCollator(pad_token_id=pad_id),
                train_dataset=Dataset.from_dict(tokenised_rows(self.star_examples)),
                eval_dataset=_eval_rows(eval_dataset, tokenizer, opts),
                processing_class=tokenizer,
                **kwargs,
            )
            self._setup_reference()
        except BaseException:
            self._star.close()
            raise

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        if shard_cpu_processes(self.accelerator, self.args.fsdp_plugin_args):
            self.is_fsdp_enabled = True

    def _setup_reference(self) -> None:
        self._reference.to(self.args.device)
        self._ref_pending = self._reference.needed and self.star.reference == "precomputed"
        if not self._ref_pending:
            return
        if self.is_fsdp_enabled:  # once the model is sharded (at train begin, or before a resume loads)
            self.add_callback(_ReferenceAtTrainBegin(self))
        else:
            self._precompute_reference(self.model, reference_logprobs)

    def _precompute_reference(self, model: Any, compute: Compute) -> None:
        self._ref_pending = False
        self._reference.precompute(
            self.star_cfg.trainee.model,
            model,
            self.star_examples,
            self._star.pad_id,
            self._star.cache,
            self.args.device,
            self.args.per_device_train_batch_size,
            autocast=self.accelerator.autocast,  # the training forwards' context
            precision=str(self.accelerator.mixed_precision),
            compute=compute,
        )
        self._star.ref_lp = self._reference.logprobs

    def reference_on_shards(self, model: Any) -> None:
        """Under FSDP: the pending precomputed reference, by the sharded `model` (every process runs it
        together, each a share of the examples); a no-op once done."""
        if self._ref_pending:
            self._precompute_reference(model, ShardedReferenceCompute(self.star_examples))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        if model is not None:  # FSDP: the reference comes from the starting weights, not the checkpoint's
            self.reference_on_shards(model)  # (it leaves the model resharded, as the load needs)
        super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _init_training_state(self, *args: Any, **kwargs: Any) -> tuple[int, int]:
        epochs, batches = super()._init_training_state(*args, **kwargs)
        if self.state.global_step > 0:  # a resume: prefetch from where the Trainer's data starts again
            self._star.start(_order(len(self.star_examples), cast(SFTConfig, self.args), epochs, batches))
        return epochs, batches

    # -- what TRL asks of us --
    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        assert self._signature_columns is not None
        if STAR_INDEX not in self._signature_columns:  # the collator's column survives remove_unused_columns
            self._signature_columns = [*self._signature_columns, STAR_INDEX]

    def _get_train_sampler(self, train_dataset: Any = None) -> torch.utils.data.Sampler[int]:
        return StarEpochSampler(len(self.star_examples), self.args.seed)

    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        index = inputs.pop(STAR_INDEX, None)
        labels = inputs.pop("labels")
        ids, attn = inputs["input_ids"], inputs.get("attention_mask")
        outputs = model(input_ids=ids, attention_mask=attn, use_cache=False)
        if index is None and model.training:
            raise RuntimeError(f"StarDSSTrainer: a training batch without its {STAR_INDEX!r} column")
        if index is None or not model.training:  # evaluation: plain CE over the label tokens
            lg, tg, mask = shift_for_causal_lm(outputs.logits, ids, labels != -100)
            loss = compute_loss("sft", lg, tg, mask).loss
            return (loss, outputs) if return_outputs else loss
        b, _, waited = self._star.batch(index.tolist())
        _same_tokens(b.input_ids, b.label_mask, ids, labels)
        ref_logits = None
        if self._reference.needed and b.ref_logprobs is None:
            trainee = self.accelerator.unwrap_model(model)
            ref_logits = self._reference.logits(trainee, ids, attn, self.accelerator.autocast)
        out = batch_loss(self.star_cfg.loss, outputs.logits, ids, b, ref_logits)
        self._record(out, int(b.attention_mask.sum()), waited)
        return (out.loss, outputs) if return_outputs else out.loss

    def _record(self, out: LossOutput, tokens: int, waited: float) -> None:
        step = int(self.state.global_step)
        if self._open and self._open[0][0] != step:
            self._close_step()
        self._open.append((step, out, tokens, waited))
        for key in ("weighted_ce", "kl", "mean_star"):
            self._metrics["train"][f"star/{key}"].append(getattr(out, key))
        self._metrics["train"]["star/scorer_wait_s"].append(waited)

    def _close_step(self) -> None:
        if not self._open:
            return
        step = self._open[0][0]
        stats = [o for _, o, _, _ in self._open]
        tokens = sum(t for _, _, t, _ in self._open)
        wait = sum(w for *_, w in self._open)
        lr = float(self.lr_scheduler.get_last_lr()[0]) if self.lr_scheduler is not None else 0.0
        self.star_rows.append(step_row(step, int(self.state.epoch or 0), lr, stats, tokens, wait, 0.0, 0.0))
        self._open = []

    def train(self, *args: Any, **kwargs: Any) -> Any:
        """SFTTrainer.train; afterwards the scorer connection and the score cache are closed."""
        try:
            return super().train(*args, **kwargs)
        finally:
            self._close_step()
            self.star_guard_requests = self._star.guard_requests
            self._star.close()


class _ReferenceAtTrainBegin(TrainerCallback):
    """Runs the FSDP run's pending reference precompute once the Trainer has sharded the model."""

    def __init__(self, trainer: StarDSSTrainer) -> None:
        self.trainer = trainer

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self.trainer.reference_on_shards(model)


def _model_and_tokenizer(model: Any, args: SFTConfig, processing_class: Any) -> tuple[Any, Any]:
    """The model object (loaded as TRL loads a path) and the tokenizer star-train would use."""
    from transformers import AutoTokenizer

    if isinstance(model, str):
        from trl.trainer.utils import create_model_from_path

        model = create_model_from_path(model, **cast(dict[str, Any], args.model_init_kwargs or {}))
    tok = processing_class or AutoTokenizer.from_pretrained(model.name_or_path)
    if not getattr(tok, "chat_template", None):
        raise ValueError("StarDSSTrainer needs a tokenizer with a chat template (to locate the responses)")
    return model, tok


def _order(n: int, args: SFTConfig, epochs_done: int = 0, batches_done: int = 0) -> list[list[int]]:
    """The micro-batches this process will see over the whole run (see `batch_order`); on a resume,
    after the `epochs_done` epochs and the `batches_done` micro-batches of the next that the Trainer
    skips."""
    bs, world = args.per_device_train_batch_size, max(1, args.world_size)
    per_epoch = math.ceil(math.ceil(n / bs / world) / args.gradient_accumulation_steps)
    epochs = math.ceil(args.max_steps / per_epoch) if args.max_steps > 0 else math.ceil(args.num_train_epochs)
    acc = args.accelerator_config
    even = bool(getattr(acc, "even_batches", True)) if acc is not None else True
    drop = bool(args.dataloader_drop_last)
    shard = (args.process_index, world, drop, even)
    order = list(batch_order(n, args.seed, bs, max(1, epochs, epochs_done + 1), *shard))
    skip = epochs_done * len(list(batch_order(n, args.seed, bs, 1, *shard))) + batches_done
    return order[skip:]


def _eval_rows(eval_dataset: Any, tokenizer: Any, opts: Mapping[str, Any]) -> Any:
    """Eval data tokenised as the training data (no STAR index: evaluation reports plain CE)."""
    if eval_dataset is None:
        return None
    if isinstance(eval_dataset, Mapping):
        return {k: _eval_rows(v, tokenizer, opts) for k, v in eval_dataset.items()}
    from datasets import Dataset

    rows = tokenised_rows(build_examples(tokenizer, conversations(eval_dataset), **opts))
    del rows[STAR_INDEX]
    return Dataset.from_dict(rows)


def _same_tokens(
    ids: torch.Tensor, label_mask: torch.Tensor, trl_ids: torch.Tensor, labels: torch.Tensor
) -> None:
    """TRL's batch must hold exactly star-train's tokens and labels (else weights would be misplaced)."""
    trl_ids, labels = trl_ids.cpu(), labels.cpu()
    if trl_ids.shape != ids.shape or not torch.equal(label_mask.bool(), labels != -100):
        raise RuntimeError("StarDSSTrainer: the batch's labels differ from the STAR examples'")
    if not torch.equal(trl_ids[label_mask.bool()], ids[label_mask.bool()]):
        raise RuntimeError("StarDSSTrainer: the batch's tokens differ from the STAR examples'")
