"""Piecewise-linear interpolation over measured grids, used by the profiled
cost model (sim/cost/profiled.py).

Rules, per axis: **linear** between grid points, **extrapolated linearly**
above the largest point with the last segment's slope (``PiecewiseLinear``
stays flat there instead if ``extrapolate`` is false), and **clamped** (flat)
below the smallest. ``Bilinear`` applies the same rules on each axis of a full
``(b, c)`` grid; ``_summed`` adds weighted piecewise-linear curves exactly, on
the union of their grids.
"""
from __future__ import annotations

from bisect import bisect_right

import numpy as np

try:      # ``np.interp`` without its Python wrapper (type checks that cost more than the work here)
    from numpy._core.multiarray import interp
except ImportError:      # numpy < 2
    try:
        from numpy.core.multiarray import interp
    except ImportError:
        interp = np.interp


class PiecewiseLinear:
    """Through sorted points: linear between them, the last segment's slope
    above the last (or flat if ``extrapolate`` is false), flat below the first."""

    __slots__ = ("xs", "ys", "slopes", "x0", "y0", "top")

    def __init__(self, xs, ys, extrapolate: bool = True) -> None:
        order = np.argsort(xs)
        self.xs = [float(x) for x in np.asarray(xs, dtype=float)[order]]
        self.ys = [float(y) for y in np.asarray(ys, dtype=float)[order]]
        if len(set(self.xs)) != len(self.xs):
            raise ValueError(f"duplicate grid points {self.xs}")
        self.slopes = [(self.ys[i + 1] - self.ys[i]) / (self.xs[i + 1] - self.xs[i])
                       for i in range(len(self.xs) - 1)]
        if not extrapolate and self.slopes:
            self.xs.append(self.xs[-1] + 1.0)
            self.ys.append(self.ys[-1])
            self.slopes.append(0.0)
        self.x0, self.y0, self.top = self.xs[0], self.ys[0], len(self.slopes) - 1

    def __call__(self, x: float) -> float:
        if x <= self.x0 or self.top < 0:
            return self.y0
        i = min(bisect_right(self.xs, x) - 1, self.top)
        return self.ys[i] + self.slopes[i] * (x - self.xs[i])

    def many(self, x: np.ndarray) -> np.ndarray:
        if self.top < 0:
            return np.full(len(x), self.y0)
        i = np.minimum(np.searchsorted(self.xs, x, side="right") - 1, self.top).clip(0)
        ys, slopes, xs = (np.asarray(a)[i] for a in (self.ys, self.slopes, self.xs))
        return np.where(x <= self.x0, self.y0, ys + slopes * (x - xs))


def _axis(grid: list[float], x: float) -> tuple[int, float]:
    """Cell index and fraction along one axis: clamped below, extrapolated above."""
    if x <= grid[0]:
        return 0, 0.0
    i = min(bisect_right(grid, x) - 1, len(grid) - 2)
    return i, (x - grid[i]) / (grid[i + 1] - grid[i])


_FAR = 1e12      # a context no run reaches: ``Bilinear.row``'s extrapolation point


class Bilinear:
    """``U(b, c)`` on a full grid, with ``_axis``'s rules on each axis."""

    def __init__(self, bs: list[float], cs: list[float], values: np.ndarray) -> None:
        self.bs, self.cs, self.v = bs, cs, [[float(x) for x in row] for row in values]
        self.arr = np.asarray(values, dtype=float)
        self._cs = np.asarray(cs, dtype=float)          # for ``row``: no per-call conversions
        self._dcs = np.diff(self._cs)
        self._rows: dict[float, tuple[np.ndarray, np.ndarray]] = {}

    def __call__(self, b: float, c: float) -> float:
        i, tb = _axis(self.bs, b)
        j, tc = _axis(self.cs, c)
        lo, hi = self.v[i], self.v[i + 1]
        return ((1 - tb) * ((1 - tc) * lo[j] + tc * lo[j + 1])
                + tb * ((1 - tc) * hi[j] + tc * hi[j + 1]))

    def row(self, b: float) -> tuple[np.ndarray, np.ndarray]:
        """``(xs, ys)`` of ``c -> U(b, c)`` for ``np.interp``: the grid with one
        far point that carries the last segment's slope on (extrapolation),
        clamped below by ``np.interp`` itself. Cached per ``b``."""
        cached = self._rows.get(b)
        if cached is None:
            i, tb = _axis(self.bs, b)
            ys = (1 - tb) * self.arr[i] + tb * self.arr[i + 1]
            far = self._cs[-1] + _FAR
            slope = (ys[-1] - ys[-2]) / self._dcs[-1] if len(ys) > 1 else 0.0
            cached = self._rows[b] = (np.append(self._cs, far), np.append(ys, ys[-1] + slope * _FAR))
        return cached


def _summed(parts: list[tuple[PiecewiseLinear, float]]) -> PiecewiseLinear:
    """The weighted sum of piecewise-linear curves, exact on the union grid."""
    if not parts:
        return PiecewiseLinear([1.0], [0.0])
    grid = np.unique(np.concatenate([c.xs for c, _ in parts]))
    return PiecewiseLinear(grid, sum(w * c.many(grid) for c, w in parts))
