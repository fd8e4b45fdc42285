"""TrainConfig: every knob of a finetuning run, loaded from a YAML recipe with `key=value` overrides."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from star_contract.types import Convention
from trainer_client.train.sharding_rules import sharding_checks

METHODS = ("sft", "rs", "dss")
FINETUNE = ("lora", "full")
REFERENCES = ("auto", "precomputed")
CONVENTIONS = ("raw", "published")
MIXED = ("no", "bf16", "fp16")
DTYPES = ("float32", "bfloat16", "float16")
RS_NORMALIZE = ("all", "kept")
COMBINES = ("mean", "min")
_SEPARATORS = {"scorers": ";"}
"""Fields whose string form splits on something other than ',' (a scorer group holds commas)."""


@dataclass(frozen=True)
class TrainConfig:
    """A finetuning run. Field docs are the reference for the YAML recipe keys."""

    # -- model --
    model: str
    """Local directory of the trainee (a Hugging Face causal LM with a chat template)."""
    output_dir: str
    """Where checkpoints, metrics.jsonl, summary.json and the final weights go."""
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

    # -- data --
    data: str = ""
    """A .jsonl file of {"messages": [...]} or {"prompt", "response"} records, or any local dataset that
    `datasets` loads (a saved dataset directory, .json, .csv, .parquet)."""
    data_split: str = "train"
    max_examples: int | None = None
    max_length: int = 2048
    """Tokens per example after the chat template; longer examples are truncated (labels kept aligned)."""
    all_turns: bool = False
    """Label every assistant turn (each scored as its own guard request), not just the last."""

    # -- method --
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
    words_per_chunk: int = 5
    """M: a STAR cut after every M words, moved to the next trainee-token boundary."""
    score_temperature: float = 1.0
    star_convention: str = "raw"
    """How the scorer reads P(safe): 'raw' (the paper's formula: the raw verdict logits, over
    `score_temperature`) or 'published' (the authors' released code: space-joined words, generate()'s
    processed scores; needs a local-backend scorer). See docs/fidelity.md."""

    # -- scoring --
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

    # -- optimisation --
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
    torch_threads: int = 0
    """torch intra-op threads on CPU (0: torch's default). On a small shared CPU box, 1 avoids
    oversubscription when the scorer or other jobs run beside the trainer."""

    # -- checkpoints and logging --
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

    def __post_init__(self) -> None:
        checks = [
            (self.method in METHODS, f"method must be one of {METHODS}, not {self.method!r}"),
            (self.finetune in FINETUNE, f"finetune must be one of {FINETUNE}, not {self.finetune!r}"),
            (self.reference in REFERENCES, f"reference must be one of {REFERENCES}, not {self.reference!r}"),
            (
                self.star_convention in CONVENTIONS,
                f"star_convention must be one of {CONVENTIONS}, not {self.star_convention!r}",
            ),
            (
                self.star_convention != "published" or self.score_temperature == 1.0,
                "star_convention 'published' fixes its own temperature (0.2); leave score_temperature at 1",
            ),
            (self.mixed_precision in MIXED, f"mixed_precision must be one of {MIXED}"),
            (self.dtype in DTYPES, f"dtype must be one of {DTYPES}, not {self.dtype!r}"),
            (
                self.finetune != "full" or self.dtype == "float32" or self.allow_low_precision_updates,
                f"finetune 'full' with dtype {self.dtype!r} would have AdamW update {self.dtype} weights "
                "directly (no float32 master copy; at small lr most updates round away): set "
                "dtype: float32 with mixed_precision: bf16 (float32 weights, bf16 compute), or "
                "finetune: lora, or allow_low_precision_updates: true to train them as they are",
            ),
            (self.rs_normalize in RS_NORMALIZE, f"rs_normalize must be one of {RS_NORMALIZE}"),
            (self.kl_estimator in ("k1", "k2", "k3", "full"), "kl_estimator must be k1, k2, k3 or full"),
            (
                not (self.reference == "precomputed" and self.kl_estimator == "full"),
                "reference 'precomputed' stores target-token log-probs only; "
                "it cannot serve kl_estimator 'full'",
            ),
            (
                self.batch_size >= 1 and self.grad_accum >= 1 and self.epochs >= 1,
                "batch_size, grad_accum and epochs must be >= 1",
            ),
            (self.max_length >= 2, "max_length must be >= 2"),
            (self.lr > 0 and 0 <= self.min_lr <= self.lr, "need lr > 0 and 0 <= min_lr <= lr"),
            (0 <= self.warmup_ratio < 1, "warmup_ratio must be in [0, 1)"),
            (self.prefetch_batches >= 1, "prefetch_batches must be >= 1"),
            (self.scorer_deadline_s > 0, "scorer_deadline_s must be > 0"),
            (self.torch_threads >= 0, "torch_threads must be >= 0"),
            (bool(self.model), "model is required"),
            (bool(self.data), "data is required"),
            (
                self.method == "sft" or bool(self.scorer or self.scorers or self.scores_file),
                f"method {self.method!r} needs scores: set scorer (host:port or local:DIR), scorers "
                "(several guards) or scores_file",
            ),
            *self._scorers_checks(),
            *sharding_checks(self),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)

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

    def example_options(self) -> dict[str, Any]:
        """`build_examples` keyword arguments: how this run tokenises, cuts and asks for scores."""
        return {
            "max_length": self.max_length,
            "all_turns": self.all_turns,
            "words_per_chunk": self.words_per_chunk,
            "temperature": self.score_temperature,
            "convention": Convention(self.star_convention),
        }

    @property
    def resolved_cache_path(self) -> str | None:
        if self.cache_path == "":
            return None
        return self.cache_path or str(Path(self.output_dir) / "score_cache.sqlite")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["lora_targets"] = list(self.lora_targets)
        d["scorers"] = list(self.scorers)
        return d

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


def _coerce(name: str, tp: Any, value: Any) -> Any:
    """Turn YAML or `--set` values into the field's type."""
    if isinstance(tp, str):
        tp = eval(tp, vars(typing), {})  # annotations are strings under `from __future__ import annotations`
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "~")):
            return None
        inner = next(a for a in args if a is not type(None))
        return _coerce(name, inner, value)
    if origin is tuple:
        items = value.split(_SEPARATORS.get(name, ",")) if isinstance(value, str) else list(value)
        return tuple(str(x).strip() for x in items if str(x).strip())
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{name} must be a mapping")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if str(value).lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{name} must be true or false, not {value!r}")
    if tp is str and isinstance(value, bool):
        return "yes" if value else "no"  # YAML 1.1 reads `mixed_precision: no` (or --set ...=no) as false
    if tp in (int, float, str):
        try:
            return tp(value) if not (tp is int and isinstance(value, float)) else int(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be {tp.__name__}, not {value!r}") from None
    return value


def build_config(values: dict[str, Any]) -> TrainConfig:
    """A TrainConfig from a mapping, with types coerced and unknown keys rejected."""
    known = {f.name: f for f in fields(TrainConfig)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"unknown config key(s): {', '.join(unknown)} (see examples/*.yaml for the keys)")
    required = [n for n, f in known.items() if f.default is MISSING and f.default_factory is MISSING]
    absent = [n for n in required if n not in values]
    if absent:
        keys = ", ".join(absent)
        raise ValueError(f"missing config key(s): {keys} (set them in --config or with --set KEY=VALUE)")
    return TrainConfig(**{k: _coerce(k, known[k].type, v) for k, v in values.items()})


def load_config(path: str | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML recipe and apply `key=value` overrides (values parsed as YAML scalars)."""
    return build_config(read_recipe(path, overrides))


def read_recipe(path: str | None, overrides: list[str] | None = None) -> dict[str, Any]:
    """The recipe's keys as written (YAML, then `key=value` overrides), not yet checked."""
    values: dict[str, Any] = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise ValueError(f"config file {path} does not exist")
        loaded = yaml.safe_load(p.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path} must hold a mapping of config keys")
        values.update(loaded)
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects key=value, got {item!r}")
        values[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
    return values


def add_recipe_arguments(ap: Any, config_required: bool) -> None:
    """`--config` (a YAML recipe) and repeatable `--set KEY=VALUE`, as star-train and
    star-score-dataset read them (`load_config(args.config, args.overrides)`)."""
    ap.add_argument("--config", required=config_required, help="YAML recipe (a mapping of TrainConfig keys)")
    ap.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one recipe key (repeatable); VALUE is parsed as YAML, lists as a,b,c",
    )
