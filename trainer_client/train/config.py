"""TrainConfig: every knob of a finetuning run, loaded from a YAML recipe with `key=value` overrides.

A TrainConfig is made of parts (trainer_client/train/config_parts.py): `trainee`, `dataset`, `star`,
`loss`, `optim` and `run`. The recipe stays flat: each of its keys is one field of one part
(`RECIPE_KEYS`), as `build_config`, `to_dict` and `replace` read and write it."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from trainer_client.train.config_parts import (
    DataConfig,
    LossConfig,
    OptimConfig,
    RunConfig,
    StarConfig,
    TraineeConfig,
    raise_first,
)
from trainer_client.train.sharding_rules import sharding_checks

_SEPARATORS = {"scorers": ";"}
"""Fields whose string form splits on something other than ',' (a scorer group holds commas)."""


@dataclass(frozen=True)
class TrainConfig:
    """A finetuning run, one part per concern; the parts' field docs are the reference for the recipe
    keys. Build one from flat keys with `build_config` (or `load_config` from a recipe file)."""

    trainee: TraineeConfig
    """The model being finetuned and which of its weights train."""
    dataset: DataConfig
    """The training conversations and their tokenisation."""
    star: StarConfig
    """Where the guard's scores come from and how STAR asks for them."""
    loss: LossConfig
    """The training objective."""
    optim: OptimConfig
    """The optimizer, its schedule and batches, precision and sharding."""
    run: RunConfig
    """Output directory, checkpoints, resuming and reporting."""

    def __post_init__(self) -> None:
        """The checks that span parts (each part has checked its own fields)."""
        method = self.loss.method
        raise_first(
            [
                (
                    method == "sft" or self.star.has_scores,
                    f"method {method!r} needs scores: set scorer (host:port or local:DIR), scorers "
                    "(several guards) or scores_file",
                ),
                *sharding_checks(self),
            ]
        )

    def example_options(self) -> dict[str, Any]:
        """`build_examples` keyword arguments: how this run tokenises, cuts and asks for scores."""
        return self.star.example_options(self.dataset.max_length, self.dataset.all_turns)

    @property
    def resolved_cache_path(self) -> str | None:
        """The sqlite score cache's path: `cache_path`, else OUTPUT_DIR/score_cache.sqlite; None if ''."""
        if self.star.cache_path == "":
            return None
        return self.star.cache_path or str(Path(self.run.output_dir) / "score_cache.sqlite")

    def to_dict(self) -> dict[str, Any]:
        """The flat recipe keys and their values (summary.json's `config`), lists for tuples."""
        d: dict[str, Any] = {}
        for part in fields(self):
            d.update(dataclasses.asdict(getattr(self, part.name)))
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some flat recipe keys changed (checked again, not coerced)."""
        grouped = _by_part(changes)
        parts = {name: dataclasses.replace(getattr(self, name), **kv) for name, kv in grouped.items()}
        return dataclasses.replace(self, **parts)


PARTS: dict[str, type[Any]] = {
    f.name: typing.get_type_hints(TrainConfig)[f.name] for f in fields(TrainConfig)
}
"""TrainConfig's field name -> the part's class, in order."""


def _recipe_keys() -> dict[str, tuple[str, dataclasses.Field[Any]]]:
    """Each recipe key's part and field, from walking the parts' fields (a key in two parts is a bug)."""
    keys: dict[str, tuple[str, dataclasses.Field[Any]]] = {}
    for name, part in PARTS.items():
        for f in fields(part):
            if f.name in keys:
                raise TypeError(f"recipe key {f.name} is declared by both {keys[f.name][0]} and {name}")
            keys[f.name] = (name, f)
    return keys


RECIPE_KEYS = _recipe_keys()
"""recipe key -> (the TrainConfig field of the part that holds it, the part's dataclass field)."""


def recipe_defaults() -> dict[str, Any]:
    """Each recipe key's default (MISSING for the required keys `model` and `output_dir`)."""
    return {
        k: f.default_factory() if f.default_factory is not MISSING else f.default
        for k, (_, f) in RECIPE_KEYS.items()
    }


def _by_part(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Flat recipe keys grouped by the part that holds them; unknown keys refused."""
    unknown = sorted(set(values) - set(RECIPE_KEYS))
    if unknown:
        raise ValueError(f"unknown config key(s): {', '.join(unknown)} (see examples/*.yaml for the keys)")
    grouped: dict[str, dict[str, Any]] = {}
    for k, v in values.items():
        grouped.setdefault(RECIPE_KEYS[k][0], {})[k] = v
    return grouped


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
    """A TrainConfig from a flat mapping of recipe keys, with types coerced and unknown keys rejected."""
    grouped = _by_part(values)
    required = [
        k for k, (_, f) in RECIPE_KEYS.items() if f.default is MISSING and f.default_factory is MISSING
    ]
    absent = [k for k in required if k not in values]
    if absent:
        keys = ", ".join(absent)
        raise ValueError(f"missing config key(s): {keys} (set them in --config or with --set KEY=VALUE)")
    parts = {
        name: part(**{k: _coerce(k, RECIPE_KEYS[k][1].type, v) for k, v in grouped.get(name, {}).items()})
        for name, part in PARTS.items()
    }
    return TrainConfig(**parts)


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
