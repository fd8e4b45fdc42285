"""Landscape figures as PNG (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot_1d(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    out: str | Path,
    title: str = "Safety landscape",
    basins: Mapping[str, tuple[float, float]] | None = None,
    xlabel: str = "alpha (perturbation along a random direction)",
    marks: Sequence[tuple[float, str]] = (),
) -> Path:
    """One line per curve (label -> (x, safety)); basins shaded; `marks` are labelled vertical lines."""
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for label, (xs, ys) in curves.items():
        order = sorted(range(len(xs)), key=lambda i: xs[i])
        (line,) = ax.plot([xs[i] for i in order], [ys[i] for i in order], marker="o", ms=3, label=label)
        if basins and label in basins:
            lo, hi = basins[label]
            ax.axvspan(lo, hi, color=line.get_color(), alpha=0.08)
    for x, text in marks:
        ax.axvline(x, color="grey", ls="--", lw=0.8)
        ax.annotate(text, (x, 102), ha="center", fontsize=8, color="grey", annotation_clip=False)
    ax.set_ylim(-3, 105)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("safety = 100 - ASR (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_2d(
    alphas: Sequence[float],
    betas: Sequence[float],
    safety: Sequence[Sequence[float]],
    out: str | Path,
    title: str = "Safety landscape (2D)",
) -> Path:
    """Heatmap with contour lines; `safety[i][j]` is at (alphas[i], betas[j])."""
    import numpy as np

    z = np.asarray(safety, dtype=float).T  # rows = beta, columns = alpha
    fig, ax = plt.subplots(figsize=(6, 5), dpi=120)
    mesh = ax.pcolormesh(alphas, betas, z, shading="nearest", cmap="RdYlGn", vmin=0, vmax=100)
    if len(alphas) > 1 and len(betas) > 1 and float(z.max()) > float(z.min()):
        cs = ax.contour(alphas, betas, z, levels=[25, 50, 75, 90], colors="k", linewidths=0.6)
        ax.clabel(cs, fontsize=7)
    ax.plot([0], [0], marker="*", color="k", ms=9)
    fig.colorbar(mesh, ax=ax, label="safety = 100 - ASR (%)")
    ax.set_xlabel("alpha (direction 1)")
    ax.set_ylabel("beta (direction 2)")
    ax.set_title(title)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out)
    plt.close(fig)
    return out
