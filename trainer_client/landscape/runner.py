"""Run a safety landscape: load a model, walk the grid with in-place perturbations, judge, summarise, plot."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from star_contract.model_dir import require_model_dir
from trainer_client.generation import GenerationConfig
from trainer_client.landscape.directions import (
    DeltaDirection,
    DictSource,
    Direction,
    RandomDirection,
    SafetensorsSource,
    adapter_base_path,
    is_adapter_dir,
    lora_deltas,
)
from trainer_client.landscape.grid import (
    DEFAULT_ALPHAS,
    GridPoint,
    interpolation_alphas,
    points_1d,
    points_2d,
    points_interp,
)
from trainer_client.landscape.perturb import Perturber, StoreKind
from trainer_client.landscape.plot import plot_1d, plot_2d
from trainer_client.landscape.results import ResultStore
from trainer_client.landscape.safety import Judge, measure_safety
from trainer_client.landscape.visage import (
    BASIN_RULES,
    DEFAULT_BASIN_RULE,
    DEFAULT_TOLERANCE,
    BasinRule,
    basin_2d,
    visage_by_rule,
    visage_record,
)

Mode = Literal["1d", "2d", "interp"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class LandscapeConfig:
    """What landscape to compute and how."""

    mode: Mode = "1d"
    """"1d": `n_directions` random lines; "2d": one random plane; "interp": the path to another checkpoint."""
    alphas: tuple[float, ...] = DEFAULT_ALPHAS
    """Coefficients along a random direction (1d, and the first axis of 2d)."""
    betas: tuple[float, ...] = DEFAULT_ALPHAS
    """Coefficients along the second direction (2d only)."""
    n_directions: int = 3
    """Random directions of a 1D landscape; VISAGE averages over them."""
    seed: int = 0
    """Direction k uses seed + k (2d: seed and seed + 1, so its first axis is 1D direction 0)."""
    interp_steps: int = 11
    """Points from t=0 (this model) to t=1 (the other checkpoint), both included."""
    interp_extend: int = 3
    """Extra points of the same spacing past each end of the interpolation path."""
    basin_rule: BasinRule = DEFAULT_BASIN_RULE
    """How the 1D basin is found: "published" (llm-landscape's rule) or "tolerance" (ours); see
    visage.py. 2D basins always use the tolerance rule. Both 1D rules' numbers are in the results."""
    basin_tolerance: float = DEFAULT_TOLERANCE
    """Safety points the tolerance-rule basin may fall below the unperturbed model (see visage.py)."""
    cache_directions: bool = False
    """Keep random directions in memory (one extra model of float32) instead of redrawing per point."""
    store: StoreKind = "auto"
    """Where the original weights are kept for exact restoring (see perturb.py)."""
    store_dir: str | None = None
    """Parent directory of the disk store's temporary files (default: the system temp dir)."""
    save_responses: bool = False
    """Store every generated response in points.jsonl."""
    generation: GenerationConfig = field(default_factory=GenerationConfig)

    def __post_init__(self) -> None:
        if self.basin_rule not in BASIN_RULES:
            raise ValueError(f"unknown basin rule {self.basin_rule!r}; choose {' or '.join(BASIN_RULES)}")


def load_policy(
    path: str, dtype: str = "float32", device: str = "cpu", base: str | None = None
) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer from a local directory; a peft adapter is merged into its base."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose from {sorted(DTYPES)}")
    model: Any
    p = require_model_dir(path, "model", adapter_ok=True)
    if is_adapter_dir(p):
        from peft import PeftModel

        base_path = base or adapter_base_path(p)
        model = AutoModelForCausalLM.from_pretrained(base_path, dtype=DTYPES[dtype])
        model = PeftModel.from_pretrained(model, str(p)).merge_and_unload()
        tok_dir = str(p) if (p / "tokenizer_config.json").exists() else base_path
    else:
        model = AutoModelForCausalLM.from_pretrained(str(p), dtype=DTYPES[dtype])
        tok_dir = str(p)
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    return model.to(device).eval(), tokenizer


def _directions(model: Any, config: LandscapeConfig, other: str | None) -> list[Direction]:
    if config.mode == "1d":
        return [
            RandomDirection(model, config.seed + k, config.cache_directions)
            for k in range(config.n_directions)
        ]
    if config.mode == "2d":
        return [RandomDirection(model, config.seed + k, config.cache_directions) for k in range(2)]
    if other is None:
        raise ValueError("mode 'interp' needs the other checkpoint (finetuned model or LoRA adapter)")
    if is_adapter_dir(other):
        return [
            DeltaDirection(model, DictSource(lora_deltas(model, other)), is_delta=True, name=f"lora({other})")
        ]
    return [DeltaDirection(model, SafetensorsSource(other), name=f"to({other})")]


def _points(config: LandscapeConfig) -> list[GridPoint]:
    if config.mode == "1d":
        return points_1d(config.alphas, config.n_directions)
    if config.mode == "2d":
        return points_2d(config.alphas, config.betas)
    return points_interp(interpolation_alphas(config.interp_steps, config.interp_extend))


def run_meta(
    config: LandscapeConfig, prompts: Sequence[str], judge: Judge, model_id: str, other: str | None
) -> dict[str, Any]:
    """Everything the points' values depend on (hashed into the run fingerprint)."""
    c = asdict(config)
    for k in ("cache_directions", "store", "store_dir", "basin_rule", "basin_tolerance"):
        c.pop(k)  # how, not what: changing these must not invalidate finished points
    return {
        "model": model_id,
        "other": other,
        "judge": judge.name,
        "prompts_sha256": hashlib.sha256("\x00".join(prompts).encode()).hexdigest(),
        "n_prompts": len(prompts),
        "config": c,
    }


def run_landscape(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    judge: Judge,
    out_dir: str | Path,
    config: LandscapeConfig | None = None,
    *,
    model_id: str = "",
    other: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    plot: bool = True,
) -> dict[str, Any]:
    """Compute (or resume) a landscape into `out_dir` and return the results dict (also in results.json).

    The model is perturbed in place and is bit-for-bit back at its original weights on return, also
    after an exception.
    """
    cfg = config or LandscapeConfig()
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts")
    store = ResultStore(out_dir, run_meta(cfg, prompts, judge, model_id, other), overwrite=overwrite)
    todo = [p for p in _points(cfg) if not store.done(p.key)]
    if todo:
        directions = _directions(model, cfg, other)
        with Perturber(model, directions, store=cfg.store, store_dir=cfg.store_dir) as pert:
            bar = tqdm(todo, desc=f"landscape {cfg.mode}", unit="pt", disable=not progress)
            for pt in bar:
                t0 = time.perf_counter()
                pert.set_point(pt.coefficients(len(directions)))
                res = measure_safety(model, tokenizer, prompts, judge, cfg.generation)
                rec: dict[str, Any] = {
                    "key": pt.key,
                    "plane": pt.plane,
                    "alpha": pt.alpha,
                    "beta": pt.beta,
                    "asr": res.asr,
                    "safety": res.safety,
                    "keyword_safety": res.keyword_safety,
                    "n": len(prompts),
                    "unsafe": [int(u) for u in res.unsafe],
                    "seconds": round(time.perf_counter() - t0, 3),
                }
                if cfg.save_responses:
                    rec["responses"] = list(res.responses)
                store.append(rec)
                bar.set_postfix(safety=f"{res.safety:.1f}")
    results = summarize(cfg, store.points, store.meta)
    if plot:
        results["plots"] = [
            str(p) for p in make_plots(cfg, results, Path(out_dir), title=_short(model_id or "model"))
        ]
    store.write_results(results)
    return results


def _short(name: str, width: int = 40) -> str:
    return name if len(name) <= width else "..." + name[-(width - 3) :]


def _value(points: dict[str, dict[str, Any]], pt: GridPoint) -> float:
    return float(points[pt.key]["safety"])


def summarize(
    config: LandscapeConfig, points: dict[str, dict[str, Any]], meta: dict[str, Any]
) -> dict[str, Any]:
    """Per-point records in grid order plus the mode's summary (VISAGE and basins, or path ends)."""
    grid = _points(config)
    missing = [p.key for p in grid if p.key not in points]
    if missing:
        raise RuntimeError(f"{len(missing)} landscape point(s) missing, e.g. {missing[:3]}")
    out: dict[str, Any] = {"meta": meta, "mode": config.mode}
    if config.mode == "1d":
        curves = []
        for k in range(config.n_directions):
            pts = [GridPoint(f"d{k}", a) for a in config.alphas]
            curves.append(([p.alpha for p in pts], [_value(points, p) for p in pts]))
        v = visage_by_rule(curves, config.basin_tolerance)
        kw_curves = [
            (a, [float(points[GridPoint(f"d{k}", x).key].get("keyword_safety", float("nan"))) for x in a])
            for k, (a, _) in enumerate(curves)
        ]
        kv = visage_by_rule(kw_curves, config.basin_tolerance)
        out["keyword"] = {
            **visage_record(kv[config.basin_rule]),
            "by_rule": {r: visage_record(x) for r, x in kv.items()},
            "curves": [s for _, s in kw_curves],
        }
        out["curves"] = [
            {"direction": k, "seed": config.seed + k, "alpha": a, "safety": s}
            for k, (a, s) in enumerate(curves)
        ]
        out.update(visage_record(v[config.basin_rule]))
        out["by_rule"] = {r: visage_record(x) for r, x in v.items()}
        out["basin_tolerance"] = config.basin_tolerance
        out["origin_safety"] = v[config.basin_rule].basins[0].origin_safety
    elif config.mode == "2d":
        grid2 = [[_value(points, GridPoint("2d", a, b)) for b in config.betas] for a in config.alphas]
        b2 = basin_2d(config.alphas, config.betas, grid2, config.basin_tolerance)
        out["alpha"], out["beta"], out["safety"] = list(config.alphas), list(config.betas), grid2
        out["visage"] = b2.visage
        out["basin"] = asdict(b2)
        out["basin_rule"] = b2.rule
        if config.basin_rule != b2.rule:
            out["basin_rule_note"] = "the published code has no 2D basin rule; 2D uses the tolerance rule"
        out["basin_tolerance"] = config.basin_tolerance
        out["origin_safety"] = b2.origin_safety
    else:
        ts = interpolation_alphas(config.interp_steps, config.interp_extend)
        out["t"] = list(ts)
        out["safety"] = [_value(points, GridPoint("interp", t)) for t in ts]
        out["safety_aligned"] = _value(points, GridPoint("interp", 0.0))
        out["safety_finetuned"] = _value(points, GridPoint("interp", 1.0))
    out["points"] = [points[p.key] for p in grid]
    return out


def make_plots(config: LandscapeConfig, results: dict[str, Any], out_dir: Path, title: str) -> list[Path]:
    """The mode's PNG(s) in `out_dir`."""
    if config.mode == "1d":
        curves = {f"direction {c['direction']}": (c["alpha"], c["safety"]) for c in results["curves"]}
        basins = {f"direction {b['direction']}": (b["lo"], b["hi"]) for b in results["basins"]}
        name = f"{title} (VISAGE {results['visage']:.1f})"
        return [plot_1d(curves, out_dir / "landscape_1d.png", title=name, basins=basins)]
    if config.mode == "2d":
        name = f"{title} (VISAGE {results['visage']:.1f})"
        return [
            plot_2d(results["alpha"], results["beta"], results["safety"], out_dir / "landscape_2d.png", name)
        ]
    return [
        plot_1d(
            {"interpolation": (results["t"], results["safety"])},
            out_dir / "interpolation.png",
            title=f"{title}: aligned -> finetuned",
            xlabel="t (0 = aligned, 1 = finetuned)",
            marks=[(0.0, "aligned"), (1.0, "finetuned")],
        )
    ]


def landscape_1d(
    model_path: str,
    prompts: Sequence[str],
    judge: Judge,
    out_dir: str | Path,
    *,
    directions: int = 3,
    alphas: Sequence[float] | None = None,
    seed: int = 0,
    generation: GenerationConfig | None = None,
    basin_tolerance: float = DEFAULT_TOLERANCE,
    basin_rule: BasinRule = DEFAULT_BASIN_RULE,
    device: str = "cpu",
    dtype: str = "float32",
    progress: bool = False,
    plot: bool = True,
) -> dict[str, Any]:
    """One call for a model directory's 1D landscape: results dict with "visage", "basins" and
    "basin_rule" (under `basin_rule`), "by_rule" (both rules), "curves", "plots" (the PNG path) and
    every point; resumable in `out_dir`."""
    cfg = LandscapeConfig(
        mode="1d",
        alphas=tuple(alphas) if alphas is not None else DEFAULT_ALPHAS,
        n_directions=directions,
        seed=seed,
        basin_tolerance=basin_tolerance,
        basin_rule=basin_rule,
        generation=generation or GenerationConfig(),
    )
    model, tokenizer = load_policy(model_path, dtype=dtype, device=device)
    return run_landscape(
        model, tokenizer, prompts, judge, out_dir, cfg, model_id=str(model_path), progress=progress, plot=plot
    )
