"""Bootstrap confidence intervals: plain, clustered (seeds x prompts) and paired differences.

All use percentile intervals from a seeded ``numpy`` generator, so a figure is reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Estimate:
    mean: float
    lo: float
    hi: float

    def as_dict(self) -> dict[str, object]:
        return {"mean": self.mean, "ci": [self.lo, self.hi]}


def _interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(samples, [tail, 100 - tail])
    return float(lo), float(hi)


def bootstrap_mean(
    values: Sequence[float] | np.ndarray, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> Estimate:
    """Mean of ``values`` with a percentile bootstrap interval (resampling values)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("cannot bootstrap an empty sample")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    lo, hi = _interval(x[idx].mean(axis=1), level)
    return Estimate(float(x.mean()), lo, hi)


def bootstrap_clustered(
    groups: Sequence[Sequence[float] | np.ndarray], n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> Estimate:
    """Two-level bootstrap: resample groups (e.g. seeds), then items (prompts) within each.

    The point estimate is the mean of the group means, so every seed weighs the same.
    """
    arrays = [np.asarray(g, dtype=np.float64) for g in groups]
    if not arrays or any(a.size == 0 for a in arrays):
        raise ValueError("cannot bootstrap empty groups")
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    n = len(arrays)
    for b in range(n_boot):
        picked = rng.integers(0, n, size=n)
        stats[b] = np.mean(
            [arrays[g][rng.integers(0, arrays[g].size, arrays[g].size)].mean() for g in picked]
        )
    lo, hi = _interval(stats, level)
    return Estimate(float(np.mean([a.mean() for a in arrays])), lo, hi)


def bootstrap_paired_difference(
    a: Sequence[Sequence[float]] | np.ndarray,
    b: Sequence[Sequence[float]] | np.ndarray,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """Mean of ``a - b`` for paired observations, clustered like :func:`bootstrap_clustered`.

    ``a`` and ``b`` are lists of groups (one per seed) of equal-length per-item values; items are
    resampled jointly, so the pairing is kept.
    """
    diffs = [
        np.asarray(x, dtype=np.float64) - np.asarray(y, dtype=np.float64) for x, y in zip(a, b, strict=True)
    ]
    return bootstrap_clustered(diffs, n_boot=n_boot, level=level, seed=seed)
