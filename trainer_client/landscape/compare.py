"""1D landscapes of several models (e.g. aligned, sft- and dss-finetuned) on the same directions and
prompts, one overlay plot and a markdown table, for reports such as the toy demo's."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from trainer_client.generation import GenerationConfig
from trainer_client.landscape.plot import plot_1d
from trainer_client.landscape.runner import landscape_1d
from trainer_client.landscape.safety import Judge
from trainer_client.landscape.visage import BASIN_RULES, DEFAULT_BASIN_RULE, DEFAULT_TOLERANCE, BasinRule


def mean_curve(results: dict[str, Any], key: str = "safety") -> tuple[list[float], list[float]]:
    """(alphas, safety averaged over directions) of a 1D result; key "keyword" for the keyword judge."""
    curves = results["curves"]
    alphas = list(curves[0]["alpha"])
    rows = [c["safety"] for c in curves] if key == "safety" else results["keyword"]["curves"]
    return alphas, [sum(col) / len(col) for col in zip(*rows, strict=True)]


def compare_landscapes(
    models: Mapping[str, str],
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
    progress: bool = False,
) -> dict[str, Any]:
    """`landscape_1d` of every model (name -> directory) into out_dir/<name>/ (resumable), plus
    out_dir/landscapes_1d.png overlaying the direction-averaged curves. Returns
    {"models": {name: {"visage", "basin_rule", "origin_safety", "basins", "keyword_visage", "by_rule",
                       "results", "plot"}},
     "plot": path, "details": {name: full results dict}}; "visage", "basins" and "keyword_visage" are
    under `basin_rule`, "by_rule" holds them under every rule (rule -> {"visage", "basins",
    "keyword_visage"})."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    details: dict[str, dict[str, Any]] = {}
    for name, path in models.items():
        details[name] = landscape_1d(
            path,
            prompts,
            judge,
            out / name,
            directions=directions,
            alphas=alphas,
            seed=seed,
            generation=generation,
            basin_tolerance=basin_tolerance,
            basin_rule=basin_rule,
            device=device,
            progress=progress,
        )
    curves = {f"{n} (VISAGE {r['visage']:.1f})": mean_curve(r) for n, r in details.items()}
    basins = {
        f"{n} (VISAGE {r['visage']:.1f})": (
            sum(b["lo"] for b in r["basins"]) / len(r["basins"]),
            sum(b["hi"] for b in r["basins"]) / len(r["basins"]),
        )
        for n, r in details.items()
    }
    plot = plot_1d(
        curves,
        out / "landscapes_1d.png",
        title=f"Safety landscapes (mean of {directions} directions, judge: {judge.name[:24]})",
        basins=basins,
    )
    summary = {
        name: {
            **_rule_summary(r, r["basin_rule"]),
            "basin_rule": r["basin_rule"],
            "origin_safety": r["origin_safety"],
            "by_rule": {rule: _rule_summary(r, rule) for rule in BASIN_RULES},
            "results": str(out / name / "results.json"),
            "plot": r.get("plots", [None])[0],
        }
        for name, r in details.items()
    }
    return {"models": summary, "plot": str(plot), "details": details}


def _rule_summary(results: dict[str, Any], rule: str) -> dict[str, Any]:
    """VISAGE, basin bounds and keyword-judge VISAGE of one 1D result under one basin rule."""
    main, kw = results["by_rule"][rule], results["keyword"]["by_rule"][rule]
    return {
        "visage": main["visage"],
        "basins": [[b["lo"], b["hi"]] for b in main["basins"]],
        "keyword_visage": kw["visage"],
    }


def markdown_table(comparison: dict[str, Any]) -> str:
    """A markdown table per model: VISAGE under each basin rule (the chosen one first), safety at the
    origin, the chosen rule's basin bounds and its keyword-judge VISAGE; headers name the rules."""
    models = comparison["models"]
    rule = next(iter(models.values()))["basin_rule"] if models else DEFAULT_BASIN_RULE
    other = [r for r in BASIN_RULES if r != rule]
    head = [f"VISAGE ({rule} basin)", *(f"VISAGE ({r} basin)" for r in other), "safety at alpha=0"]
    head += [f"{rule} basin (per direction)", f"VISAGE (keyword judge, {rule} basin)"]
    lines = ["| model | " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 2) + "---|---:|"]
    for name, m in models.items():
        basins = ", ".join(f"[{lo:+.2f}, {hi:+.2f}]" for lo, hi in m["by_rule"][rule]["basins"])
        vs = [m["by_rule"][r]["visage"] for r in (rule, *other)]
        cells = [*(f"{v:.1f}" for v in vs), f"{m['origin_safety']:.1f}", basins]
        cells.append(f"{m['by_rule'][rule]['keyword_visage']:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
