"""The parts of a `TrainConfig`, one frozen dataclass per concern, each checking its own fields.

A part's field names are recipe keys: the recipe stays one flat mapping and `TrainConfig` sends each
key to the part that declares it. The field docs are the reference for the YAML recipe keys."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from star_contract.types import Convention
from trainer_client.train.sharding_rules import SHARDINGS

METHODS = ("sft", "rs", "dss")
FINETUNE = ("lora", "full")
REFERENCES = ("auto", "precomputed")
CONVENTIONS = ("raw", "published")
MIXED = ("no", "bf16", "fp16")
DTYPES = ("float32", "bfloat16", "float16")
RS_NORMALIZE = ("all", "kept")
COMBINES = ("mean", "min")

P = TypeVar("P")


def raise_first(checks: list[tuple[bool, str]]) -> None:
    """Raise ValueError with the message of the first failed (ok, message) check."""
    for ok, msg in checks:
        if not ok:
            raise ValueError(msg)


def part_of(obj: Any, part: type[P]) -> P:
    """A `part` built from the same-named attributes of `obj` (e.g. the StarConfig of a StarDSSConfig)."""
    return part(**{f.name: getattr(obj, f.name) for f in fields(part)})  # type: ignore[arg-type]


@dataclass(frozen=True)
class TraineeConfig:
    """The model being finetuned: where it is, how its weights load, and which of them train."""

    model: str
    """Local directory of the trainee (a Hugging Face causal LM with a chat template)."""
    finetune: str = "lora"
    """'lora' (peft adapter; the reference is the same model with the adapter disabled) or 'full'
    (all weights; the reference is a frozen copy)."""
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    dtype: str = "float32"
    """Weights' dtype when loading: float32, bfloat16 or float16. The trained weights are kept in this
    dtype (there is no separate master copy), so full finetuning wants float32 here, with
    `mixed_precision: bf16` for bf16 compute. LoRA may load a bfloat16/float16 base: its adapters are
    created in float32."""
    allow_low_precision_updates: bool = False
    """Full finetuning with dtype bfloat16/float16 is refused unless this is true: AdamW would then
    update the low-precision weights directly and at small learning rates most updates round away."""

    def __post_init__(self) -> None:
        raise_first(
            [
                (self.finetune in FINETUNE, f"finetune must be one of {FINETUNE}, not {self.finetune!r}"),
                (self.dtype in DTYPES, f"dtype must be one of {DTYPES}, not {self.dtype!r}"),
                (
                    self.finetune != "full" or self.dtype == "float32" or self.allow_low_precision_updates,
                    f"finetune 'full' with dtype {self.dtype!r} would have AdamW update {self.dtype} weights "
                    "directly (no float32 master copy; at small lr most updates round away): set "
                    "dtype: float32 with mixed_precision: bf16 (float32 weights, bf16 compute), or "
                    "finetune: lora, or allow_low_precision_updates: true to train them as they are",
                ),
                (bool(self.model), "model is required"),
            ]
        )


@dataclass(frozen=True)
class DataConfig:
    """The training conversations and how they become token sequences."""

    data: str = ""
    """A .jsonl file of {"messages": [...]} or {"prompt", "response"} records, or any local dataset that
    `datasets` loads (a saved dataset directory, .json, .csv, .parquet)."""
    data_split: str = "train"
    max_examples: int | None = None
    max_length: int = 2048
    """Tokens per example after the chat template; longer examples are truncated (labels kept aligned)."""
    all_turns: bool = False
    """Label every assistant turn (each scored as its own guard request), not just the last."""

    def __post_init__(self) -> None:
        raise_first(
            [(self.max_length >= 2, "max_length must be >= 2"), (bool(self.data), "data is required")]
        )


@dataclass(frozen=True)
class StarConfig:
    """Where the guard's scores come from and how STAR asks for them (cuts, temperature, convention)."""

    scorer: str | None = None
    """'host:port[,host:port...]' of scorer replicas, or 'local:GUARD_DIR' for an in-process guard."""
    scorers: tuple[str, ...] = ()
    """Several guards, one entry each (instead of `scorer`): 'host:port[,host:port...]' (one guard's
    replicas) or 'local:GUARD_DIR[@PRESET]'. A YAML list; on the command line `a:1,a:2;local:/g`."""
    combine: str = "mean"
    """With `scorers`: how each cut's P(safe) is combined across the guards, 'mean' or 'min'. RS keeps
    an example when the guards' verdicts, combined the same way on P(safe), give P(unsafe) < 0.5."""
    guard_preset: str = "llama-guard-3"
    """Preset for 'local:' scorers (a `scorers` entry may name its own: 'local:DIR@PRESET')."""
    scores_file: str | None = None
    """A JSONL from `star-score-dataset` (offline mode); used instead of `scorer` or `scorers`."""
    cache_path: str | None = None
    """sqlite score cache (default OUTPUT_DIR/score_cache.sqlite); '' disables it."""
    prefetch_batches: int = 4
    """How many micro-batches ahead scores are kept in flight."""
    scorer_deadline_s: float = 900.0
    """How long one scoring call may take, waits for a scorer that is down, restarting, loading its guard
    or overloaded included (the client retries all the while); only past it does the run fail. The
    default covers a pod rescheduled onto another node plus an 8B guard's load."""
    scorer_delay_s: float = 0.0
    """Testing: extra seconds added to every scorer call (simulates a slow or distant scorer)."""
    words_per_chunk: int = 5
    """M: a STAR cut after every M words, moved to the next trainee-token boundary."""
    score_temperature: float = 1.0
    star_convention: str = "raw"
    """How the scorer reads P(safe): 'raw' (the paper's formula: the raw verdict logits, over
    `score_temperature`) or 'published' (the authors' released code: space-joined words, generate()'s
    processed scores; needs a local-backend scorer). See docs/fidelity.md."""

    def __post_init__(self) -> None:
        raise_first(
            [
                (
                    self.star_convention in CONVENTIONS,
                    f"star_convention must be one of {CONVENTIONS}, not {self.star_convention!r}",
                ),
                (
                    self.star_convention != "published" or self.score_temperature == 1.0,
                    "star_convention 'published' fixes its own temperature (0.2); "
                    "leave score_temperature at 1",
                ),
                (self.prefetch_batches >= 1, "prefetch_batches must be >= 1"),
                (self.scorer_deadline_s > 0, "scorer_deadline_s must be > 0"),
                *self._scorers_checks(),
            ]
        )

    def _scorers_checks(self) -> list[tuple[bool, str]]:
        """`scorers` and `combine`: several guards, one entry each, and the rule that combines them."""
        s = self.scorers
        twice = sorted({x for x in s if s.count(x) > 1})
        return [
            (self.combine in COMBINES, f"combine must be one of {COMBINES}, not {self.combine!r}"),
            (
                not (self.scorer and s),
                "set scorer (one guard) or scorers (several guards), not both",
            ),
            (
                len(s) != 1,
                f"scorers names several guards; for the one guard {s[0] if s else ''!r} set scorer instead",
            ),
            (not twice, f"scorers lists {', '.join(map(repr, twice))} more than once"),
            (
                all(x.removeprefix("local:").strip() for x in s),
                "every scorers entry needs host:port[,host:port] or local:GUARD_DIR",
            ),
            (
                self.combine == "mean" or bool(s),
                f"combine {self.combine!r} applies only to several guards: set scorers too",
            ),
        ]

    @property
    def has_scores(self) -> bool:
        """Whether a source of scores is named (a scorer, several, or a scores file)."""
        return bool(self.scorer or self.scorers or self.scores_file)

    def example_options(self, max_length: int, all_turns: bool) -> dict[str, Any]:
        """`build_examples` keyword arguments: how a run tokenises, cuts and asks for scores."""
        return {
            "max_length": max_length,
            "all_turns": all_turns,
            "words_per_chunk": self.words_per_chunk,
            "temperature": self.score_temperature,
            "convention": Convention(self.star_convention),
        }


@dataclass(frozen=True)
class LossConfig:
    """The training objective: plain SFT, rejection sampling, or STAR-DSS with its KL term."""

    method: str = "dss"
    """'sft' (plain), 'rs' (drop examples the guard judges unsafe) or 'dss' (STAR-DSS)."""
    rs_normalize: str = "all"
    """method 'rs' only: the loss's denominator. 'all' (the published code's): every label token of the
    micro-batch, dropped examples included; 'kept': the label tokens of the kept examples only."""
    lambda_kl: float = 0.5
    kl_estimator: str = "k2"
    """'k1', 'k2', 'k3' on the target token, or 'full' (the whole vocabulary)."""
    reference: str = "auto"
    """'auto' (a reference forward each step) or 'precomputed' (target-token reference log-probs computed
    once before training and cached; not with the 'full' estimator)."""

    def __post_init__(self) -> None:
        raise_first(
            [
                (self.method in METHODS, f"method must be one of {METHODS}, not {self.method!r}"),
                (
                    self.reference in REFERENCES,
                    f"reference must be one of {REFERENCES}, not {self.reference!r}",
                ),
                (self.rs_normalize in RS_NORMALIZE, f"rs_normalize must be one of {RS_NORMALIZE}"),
                (self.kl_estimator in ("k1", "k2", "k3", "full"), "kl_estimator must be k1, k2, k3 or full"),
                (
                    not (self.reference == "precomputed" and self.kl_estimator == "full"),
                    "reference 'precomputed' stores target-token log-probs only; "
                    "it cannot serve kl_estimator 'full'",
                ),
            ]
        )


@dataclass(frozen=True)
class OptimConfig:
    """How the weights are updated (AdamW, the cosine schedule, batches) and computed (precision,
    sharding, threads)."""

    epochs: int = 1
    batch_size: int = 4
    """Examples per micro-batch per process."""
    grad_accum: int = 1
    lr: float = 5e-6
    min_lr: float = 5e-8
    """The cosine schedule's floor."""
    warmup_ratio: float = 0.03
    beta1: float = 0.9
    beta2: float = 0.95
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    """0 disables clipping."""
    mixed_precision: str = "no"
    """'no', 'bf16' or 'fp16': the compute dtype (accelerate autocast); the weights stay in `dtype`."""
    seed: int = 0
    sharding: str = "none"
    """'none' (each process a whole copy: one process, or DDP under a launcher) or 'fsdp' (parameters,
    gradients and AdamW states sharded across the processes with FSDP2; launch with torchrun, see
    docs/training.md). With 'fsdp', full finetuning with dss needs reference: precomputed."""
    activation_checkpointing: bool = False
    """Recompute each decoder layer's activations in the backward pass instead of keeping them
    (transformers' activation checkpointing, non-reentrant): the kept activations drop to each layer's
    input plus one layer's intermediates, for about one more forward per step; losses and gradients are
    unchanged. `star-train --plan` counts it."""
    torch_threads: int = 0
    """torch intra-op threads on CPU (0: torch's default). On a small shared CPU box, 1 avoids
    oversubscription when the scorer or other jobs run beside the trainer."""

    def __post_init__(self) -> None:
        raise_first(
            [
                (self.mixed_precision in MIXED, f"mixed_precision must be one of {MIXED}"),
                (
                    self.batch_size >= 1 and self.grad_accum >= 1 and self.epochs >= 1,
                    "batch_size, grad_accum and epochs must be >= 1",
                ),
                (self.lr > 0 and 0 <= self.min_lr <= self.lr, "need lr > 0 and 0 <= min_lr <= lr"),
                (0 <= self.warmup_ratio < 1, "warmup_ratio must be in [0, 1)"),
                (self.torch_threads >= 0, "torch_threads must be >= 0"),
                (self.sharding in SHARDINGS, f"sharding must be one of {SHARDINGS}, not {self.sharding!r}"),
            ]
        )


@dataclass(frozen=True)
class RunConfig:
    """Where the run writes, when it checkpoints, stops and resumes, and what it reports."""

    output_dir: str
    """Where checkpoints, metrics.jsonl, summary.json and the final weights go."""
    save_every: int = 0
    """Save a checkpoint every N optimizer steps (0: only at the end)."""
    resume: bool = False
    """Continue from the latest checkpoint in output_dir."""
    stop_after_steps: int | None = None
    """Stop (with a checkpoint) after this many optimizer steps, as if interrupted."""
    progress: bool = True
    """Show a tqdm progress bar."""
    step_sleep_s: float = 0.0
    """Testing: extra seconds of work per optimizer step (makes step time predictable)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form notes carried into summary.json."""
