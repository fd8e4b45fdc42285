"""Recipes, overrides, the LR schedule, the resumable sampler and the CLI's error handling."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer_client.train.cli import main as train_main
from trainer_client.train.config import load_config
from trainer_client.train.sampler import EpochSampler
from trainer_client.train.schedule import cosine_with_floor

ROOT = Path(__file__).resolve().parent.parent


def test_published_recipe_and_overrides() -> None:
    cfg = load_config(
        str(ROOT / "examples" / "published.yaml"),
        ["model=/m", "data=d.jsonl", "output_dir=o", "scorer=h:1", "lr=1e-5", "lora_targets=q_proj,v_proj"],
    )
    o = cfg.optim
    assert (o.lr, o.min_lr, o.warmup_ratio, o.beta1, o.beta2) == (1e-5, 5e-8, 0.03, 0.9, 0.95)
    assert (o.weight_decay, o.max_grad_norm, cfg.dataset.max_length, cfg.trainee.finetune) == (
        0.0,
        1.0,
        2048,
        "full",
    )
    assert cfg.trainee.lora_targets == ("q_proj", "v_proj")
    assert cfg.loss.method == "dss" and cfg.loss.lambda_kl == 0.5 and cfg.loss.kl_estimator == "k2"


@pytest.mark.parametrize("recipe", sorted((ROOT / "examples").glob("*.yaml")))
def test_every_example_recipe_loads(recipe: Path) -> None:
    cfg = load_config(str(recipe), ["model=/m", "data=d.jsonl", "output_dir=o", "scorer=h:1"])
    assert cfg.run.output_dir == "o"


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["bogus=1"], "unknown config key"),
        (["method=ppo"], "method must be"),
        (["lr=fast"], "lr must be float"),
        (["scorer=null", "method=dss"], "needs scores"),
        (["reference=precomputed", "kl_estimator=full"], "cannot serve"),
        (["nokey"], "key=value"),
        (["rs_normalize=tokens"], "rs_normalize must be"),
    ],
)
def test_bad_config_is_a_clear_error(sets: list[str], message: str) -> None:
    base = ["model=/m", "data=d.jsonl", "output_dir=o", "scorer=h:1"]
    with pytest.raises(ValueError, match=message):
        load_config(None, base + sets)


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["scorers=a:1;b:2"], "set scorer \\(one guard\\) or scorers \\(several guards\\), not both"),
        (["scorer=null", "scorers=a:1"], "scorers names several guards; for the one guard 'a:1' set scorer"),
        (["scorer=null", "scorers=a:1;a:1"], "scorers lists 'a:1' more than once"),
        (["scorer=null", 'scorers=["a:1", "local:"]'], "every scorers entry needs host:port"),
        (["scorer=null", "scorers=a:1;b:2", "combine=max"], "combine must be one of \\('mean', 'min'\\)"),
        (["combine=min"], "combine 'min' applies only to several guards: set scorers"),
    ],
)
def test_bad_scorers_are_clear_errors(sets: list[str], message: str) -> None:
    base = ["model=/m", "data=d.jsonl", "output_dir=o", "scorer=h:1"]
    with pytest.raises(ValueError, match=message):
        load_config(None, base + sets)


def test_scorers_groups_from_yaml_and_the_command_line(tmp_path: Path) -> None:
    base = ["model=/m", "data=d.jsonl", "output_dir=o"]
    recipe = tmp_path / "r.yaml"
    recipe.write_text('scorers: ["g-0:1,g-1:1", "local:/guards/granite@granite-guardian-3"]\ncombine: min\n')
    cfg = load_config(str(recipe), base)
    assert cfg.star.scorers == ("g-0:1,g-1:1", "local:/guards/granite@granite-guardian-3")
    assert cfg.star.combine == "min" and cfg.star.scorer is None
    cli = load_config(None, [*base, "scorers=g-0:1,g-1:1;local:/guards/granite@granite-guardian-3"])
    assert cli.star.scorers == cfg.star.scorers and cli.star.combine == "mean"
    assert cli.to_dict()["scorers"] == list(cfg.star.scorers)
    # one scorer still works as before, and rs with scorers alone has its scores
    assert load_config(None, [*base, "scorer=h:1,h:2"]).star.scorers == ()
    assert load_config(None, [*base, "method=rs", "scorers=a:1;b:2"]).loss.method == "rs"


def test_published_recipe_keeps_float32_master_weights_with_bf16_compute() -> None:
    base = ["model=/m", "data=d.jsonl", "output_dir=o", "scorer=h:1"]
    cfg = load_config(str(ROOT / "examples" / "published.yaml"), base)
    assert (cfg.trainee.finetune, cfg.trainee.dtype, cfg.optim.mixed_precision) == ("full", "float32", "bf16")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_full_finetuning_refuses_low_precision_weights(dtype: str) -> None:
    base = ["model=/m", "data=d.jsonl", "output_dir=o", "scorer=h:1", "finetune=full", f"dtype={dtype}"]
    with pytest.raises(ValueError) as err:
        load_config(None, base)
    msg = str(err.value)
    assert f"finetune 'full' with dtype '{dtype}'" in msg
    for key in ("dtype: float32", "mixed_precision: bf16", "finetune: lora", "allow_low_precision_updates"):
        assert key in msg, (key, msg)
    # the explicit opt-in, and LoRA on a low-precision base (its adapters are float32), are accepted
    assert load_config(None, [*base, "allow_low_precision_updates=true"]).trainee.dtype == dtype
    assert load_config(None, [*base, "finetune=lora"]).trainee.dtype == dtype
    with pytest.raises(ValueError, match="dtype must be one of"):
        load_config(None, [*base, "dtype=int8"])


def test_rs_normalize_defaults_to_the_published_all() -> None:
    base = ["model=/m", "data=d.jsonl", "output_dir=o", "scorer=h:1", "method=rs"]
    assert load_config(None, base).loss.rs_normalize == "all"
    assert load_config(None, [*base, "rs_normalize=kept"]).loss.rs_normalize == "kept"
    published = load_config(str(ROOT / "examples" / "published.yaml"), base)
    assert published.loss.rs_normalize == "all"


def test_cli_reports_errors_without_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        train_main(["--set", "model=/m", "--set", "data=d", "--set", "output_dir=o", "--set", "epochs=0"])
        == 2
    )
    assert "star-train: error: batch_size, grad_accum and epochs" in capsys.readouterr().err
    rc = train_main(
        ["--set", "model=/nope", "--set", "data=d", "--set", "output_dir=/tmp/x", "--set", "method=sft"]
    )
    assert rc == 2 and "does not exist" in capsys.readouterr().err
    rc = train_main(
        ["--set", "model=/m", "--set", "data=d", "--set", "output_dir=o", "--set", "rs_normalize=x"]
    )
    assert (
        rc == 2
        and "star-train: error: rs_normalize must be one of ('all', 'kept')" in capsys.readouterr().err
    )
    with pytest.raises(SystemExit):
        train_main(["--help"])
    assert "--resume" in capsys.readouterr().out


def test_cosine_warmup_and_floor() -> None:
    f = cosine_with_floor(total=100, warmup=3, floor=0.01)
    assert [round(f(s), 4) for s in range(3)] == [0.3333, 0.6667, 1.0]
    assert f(3) == pytest.approx(1.0)
    assert f(99) == pytest.approx(
        0.01 + 0.99 * 0.5 * (1 + __import__("math").cos(__import__("math").pi * 96 / 97))
    )
    assert f(100) == pytest.approx(0.01)
    assert all(f(s) >= f(s + 1) for s in range(3, 100))


def test_sampler_is_seeded_and_resumable() -> None:
    s = EpochSampler(n=10, batch_size=3, grad_accum=2, seed=7)
    assert s.micro_per_epoch == 4 and s.steps_per_epoch == 2
    full = s.plan(epochs=3)
    assert [mb.step for mb in full] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert sorted(i for mb in full[:4] for i in mb.indices) == list(range(10))
    assert full[:4] != full[4:8]  # a new permutation each epoch
    assert s.plan(epochs=3, start_step=3) == full[6:]
    ranks = [EpochSampler(n=10, batch_size=2, rank=r, world=3).epoch_indices(0) for r in range(3)]
    assert sum(len(r) for r in ranks) == 9 and len(set().union(*ranks)) == 9


def test_no_means_no_for_a_string_key(tmp_path: Path) -> None:
    """YAML 1.1 reads `no` as false: `mixed_precision: no` in a recipe, or `--set mixed_precision=no`,
    must still mean the string "no", not be refused as "False"."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: m\ndata: d.jsonl\noutput_dir: o\nmethod: sft\nmixed_precision: no\n")
    assert load_config(str(recipe)).optim.mixed_precision == "no"
    assert (
        load_config(str(recipe), ["mixed_precision=bf16", "mixed_precision=no"]).optim.mixed_precision == "no"
    )
