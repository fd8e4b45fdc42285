"""Where a landscape is evaluated: 1D lines, 2D planes and the interpolation path between checkpoints."""

from __future__ import annotations

from dataclasses import dataclass


def linspace(lo: float, hi: float, steps: int) -> tuple[float, ...]:
    """`steps` evenly spaced values from lo to hi, rounded to 10 decimals (so 0.0 is exactly 0)."""
    if steps < 2:
        raise ValueError("a grid axis needs at least 2 steps")
    if not hi > lo:
        raise ValueError(f"axis bounds must satisfy lo < hi, got {lo}, {hi}")
    return tuple(round(lo + (hi - lo) * i / (steps - 1), 10) + 0.0 for i in range(steps))


DEFAULT_ALPHAS: tuple[float, ...] = linspace(-0.5, 0.5, 21)
"""The published grid: alpha in [-0.5, 0.5], 21 steps (spacing 0.05, 0 included)."""


def interpolation_alphas(steps: int = 11, extend: int = 3) -> tuple[float, ...]:
    """t values for theta_aligned + t (theta_finetuned - theta_aligned): `steps` points from 0 to 1,
    plus `extend` more points of the same spacing past each end."""
    if steps < 2 or extend < 0:
        raise ValueError("interpolation needs steps >= 2 and extend >= 0")
    h = 1.0 / (steps - 1)
    return tuple(round(i * h, 10) + 0.0 for i in range(-extend, steps + extend))


@dataclass(frozen=True)
class GridPoint:
    """One point of a landscape.

    plane: "d<k>" for the k-th random direction of a 1D landscape, "2d" for the plane of two random
    directions (alpha along the first, beta along the second), "interp" for the interpolation path.
    """

    plane: str
    alpha: float
    beta: float | None = None

    @property
    def is_origin(self) -> bool:
        return self.alpha == 0 and not self.beta

    @property
    def key(self) -> str:
        """A stable identifier; every plane shares the single "origin" point (the unperturbed model)."""
        if self.is_origin:
            return "origin"
        tail = f":{self.beta:+.6f}" if self.beta is not None else ""
        return f"{self.plane}:{self.alpha:+.6f}{tail}"

    def coefficients(self, n_directions: int) -> list[float]:
        """The coefficient of each of the Perturber's directions at this point."""
        c = [0.0] * n_directions
        if self.plane == "2d":
            c[0], c[1] = self.alpha, self.beta or 0.0
        elif self.plane == "interp":
            c[0] = self.alpha
        else:
            c[int(self.plane[1:])] = self.alpha
        return c


def points_1d(alphas: tuple[float, ...], n_directions: int) -> list[GridPoint]:
    """Every (direction, alpha) point, the origin first and once."""
    pts = [GridPoint(f"d{k}", a) for k in range(n_directions) for a in alphas]
    return _origin_first(pts)


def points_2d(alphas: tuple[float, ...], betas: tuple[float, ...]) -> list[GridPoint]:
    """The alpha x beta grid, the origin first."""
    return _origin_first([GridPoint("2d", a, b) for a in alphas for b in betas])


def points_interp(ts: tuple[float, ...]) -> list[GridPoint]:
    """The interpolation path, the aligned end (t=0) first."""
    return _origin_first([GridPoint("interp", t) for t in ts])


def _origin_first(pts: list[GridPoint]) -> list[GridPoint]:
    seen: set[str] = set()
    out: list[GridPoint] = []
    for p in sorted(pts, key=lambda p: not p.is_origin):
        if p.key not in seen:
            seen.add(p.key)
            out.append(p)
    return out
