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
from trainer_client.landscape.visage import DEFAULT_TOLERANCE


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
    device: str = "cpu",
    progress: bool = False,
) -> dict[str, Any]:
    """`landscape_1d` of every model (name -> directory) into out_dir/<name>/ (resumable), plus
    out_dir/landscapes_1d.png overlaying the direction-averaged curves. Returns
    {"models": {name: {"visage", "origin_safety", "basins", "keyword_visage", "results", "plot"}},
     "plot": path, "details": {name: full results dict}}."""
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
            "visage": r["visage"],
            "origin_safety": r["origin_safety"],
            "basins": [[b["lo"], b["hi"]] for b in r["basins"]],
            "keyword_visage": r["keyword"]["visage"],
            "results": str(out / name / "results.json"),
            "plot": r.get("plots", [None])[0],
        }
        for name, r in details.items()
    }
    return {"models": summary, "plot": str(plot), "details": details}


def markdown_table(comparison: dict[str, Any]) -> str:
    """A markdown table of VISAGE, safety at the origin and basin bounds per model."""
    lines = [
        "| model | VISAGE | safety at alpha=0 | basin (per direction) | VISAGE (keyword judge) |",
        "|---|---:|---:|---|---:|",
    ]
    for name, m in comparison["models"].items():
        basins = ", ".join(f"[{lo:+.2f}, {hi:+.2f}]" for lo, hi in m["basins"])
        v, s0, kv = m["visage"], m["origin_safety"], m["keyword_visage"]
        lines.append(f"| {name} | {v:.1f} | {s0:.1f} | {basins} | {kv:.1f} |")
    return "\n".join(lines)
