"""TrainConfig's parts: flat recipe keys in and out, each part's checks, and StarDSSConfig built from
the `star` and `loss` parts (no field of its own)."""

from __future__ import annotations

from collections import Counter
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from trainer_client.train.config import PARTS, RECIPE_KEYS, TrainConfig, build_config, load_config
from trainer_client.train.config_parts import LossConfig, StarConfig

ROOT = Path(__file__).resolve().parent.parent
BASE: dict[str, Any] = {"model": "/m", "data": "d.jsonl", "output_dir": "o", "scorer": "h:1"}


def test_every_recipe_key_is_one_field_of_one_part() -> None:
    declared = Counter(f.name for part in PARTS.values() for f in fields(part))
    assert all(n == 1 for n in declared.values()), [k for k, n in declared.items() if n > 1]
    assert set(declared) == set(RECIPE_KEYS)
    assert list(PARTS) == [f.name for f in fields(TrainConfig)]
    cfg = build_config(BASE)
    flat = cfg.to_dict()
    assert set(flat) == set(RECIPE_KEYS)
    for key, (part, _) in RECIPE_KEYS.items():
        value = getattr(getattr(cfg, part), key)
        assert flat[key] == (list(value) if isinstance(value, tuple) else value), key


@pytest.mark.parametrize("recipe", sorted((ROOT / "examples").glob("*.yaml")))
def test_to_dict_round_trips_through_build_config(recipe: Path) -> None:
    cfg = load_config(str(recipe), ["model=/m", "data=d.jsonl", "output_dir=o", "scorer=h:1"])
    assert build_config(cfg.to_dict()) == cfg
    changed = build_config(BASE | {"lr": 1e-4, "lora_targets": "q_proj", "extra": {"note": 1}})
    assert build_config(changed.to_dict()) == changed
    assert changed.optim.lr == 1e-4 and changed.trainee.lora_targets == ("q_proj",)
    assert changed.run.extra == {"note": 1}


def test_unknown_and_missing_keys_are_refused_as_before() -> None:
    with pytest.raises(ValueError, match=r"^unknown config key\(s\): bogus, lr_max \(see examples/\*\.yaml"):
        build_config(BASE | {"bogus": 1, "lr_max": 2})
    with pytest.raises(
        ValueError, match=r"^missing config key\(s\): model, output_dir \(set them in --config"
    ):
        build_config({"data": "d.jsonl", "scorer": "h:1"})
    with pytest.raises(ValueError, match="unknown config key"):
        build_config(BASE).replace(bogus=1)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("dtype", "int8", "dtype must be one of"),
        ("max_length", 1, "max_length must be >= 2"),
        ("prefetch_batches", 0, "prefetch_batches must be >= 1"),
        ("kl_estimator", "k4", "kl_estimator must be k1, k2, k3 or full"),
        ("warmup_ratio", 1.0, r"warmup_ratio must be in \[0, 1\)"),
        ("sharding", "zero3", "sharding must be one of"),
    ],
)
def test_a_part_check_fires_from_a_flat_recipe(key: str, value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_config(BASE | {key: value})
    with pytest.raises(ValueError, match=message):
        build_config(BASE).replace(**{key: value})


def test_checks_across_parts_stay_with_train_config() -> None:
    with pytest.raises(ValueError, match="method 'dss' needs scores"):
        build_config(BASE | {"scorer": None})
    fsdp_full = BASE | {"sharding": "fsdp", "finetune": "full"}
    with pytest.raises(ValueError, match="keeps no frozen reference copy"):
        build_config(fsdp_full)
    assert build_config(fsdp_full | {"reference": "precomputed"}).optim.sharding == "fsdp"


def test_replace_takes_flat_keys_and_keeps_the_rest() -> None:
    cfg = build_config(BASE)
    other = cfg.replace(output_dir="p", method="rs", lr=1e-4)
    assert (other.run.output_dir, other.loss.method, other.optim.lr) == ("p", "rs", 1e-4)
    assert other.trainee == cfg.trainee and other.star == cfg.star and other.dataset == cfg.dataset
    assert other.resolved_cache_path == str(Path("p") / "score_cache.sqlite")
    assert cfg.replace(cache_path="").resolved_cache_path is None


def test_star_dss_config_is_the_star_and_loss_parts() -> None:
    pytest.importorskip("trl")
    from trainer_client.integrations.trl import StarDSSConfig

    own = {f.name for f in fields(StarDSSConfig)}
    assert own == {f.name for part in (StarConfig, LossConfig) for f in fields(part)}
    assert issubclass(StarDSSConfig, StarConfig) and issubclass(StarDSSConfig, LossConfig)
    keys: dict[str, Any] = {
        "scorers": ("a:1", "local:/g@granite-guardian-3"),
        "combine": "min",
        "lambda_kl": 0.25,
        "reference": "precomputed",
        "words_per_chunk": 3,
        "method": "rs",
        "rs_normalize": "kept",
    }
    star = StarDSSConfig(**keys)
    flat = {**keys, "model": "m", "output_dir": "o", "data": "-"}
    assert star.as_train_config("m", "o") == build_config(flat)
    assert star.as_train_config("m", "o", lr=1e-4) == build_config(flat | {"lr": 1e-4})
    assert type(star.star) is StarConfig and type(star.loss) is LossConfig
    assert (
        star.example_options(64, True)
        == build_config(flat | {"max_length": 64, "all_turns": True}).example_options()
    )


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"method": "ppo", "scorer": "h:1"}, "method must be one of"),
        ({"scorer": "h:1", "scorers": ("a:1", "b:2")}, "not both"),
        ({"scorer": "h:1", "star_convention": "published", "score_temperature": 2.0}, "fixes its own"),
        ({"method": "dss"}, "needs scores"),
    ],
)
def test_star_dss_config_checks_are_the_parts_checks(kw: dict[str, Any], message: str) -> None:
    pytest.importorskip("trl")
    from trainer_client.integrations.trl import StarDSSConfig

    with pytest.raises(ValueError, match=message):
        StarDSSConfig(**kw)
    with pytest.raises(ValueError, match=message):
        build_config({"model": "m", "output_dir": "o", "data": "-", **kw})
