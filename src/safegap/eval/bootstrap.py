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


def bootstrap_ratio(
    numerators: Sequence[Sequence[float]] | np.ndarray,
    denominators: Sequence[Sequence[float]] | np.ndarray,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """``mean(numerator) / mean(denominator)`` for paired items in groups (seeds x prompts), with
    the same two-level resampling as :func:`bootstrap_clustered` (items resampled jointly).

    For example the fraction of a degradation that a defense recovers: per prompt, the numerator
    is (refused with the defense - refused without) and the denominator (refused as text - refused
    with the image). Resamples whose denominator is 0 are dropped from the interval; the point
    estimate is ``nan`` when the denominator's mean is 0.
    """
    nums = [np.asarray(x, dtype=np.float64) for x in numerators]
    dens = [np.asarray(y, dtype=np.float64) for y in denominators]
    if (
        not nums
        or len(nums) != len(dens)
        or any(a.size == 0 or a.size != b.size for a, b in zip(nums, dens, strict=False))
    ):
        raise ValueError("bootstrap_ratio needs non-empty groups of equal-length paired items")

    def ratio(num: float, den: float) -> float:
        return num / den if den != 0 else float("nan")

    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    n = len(nums)
    for b in range(n_boot):
        num_means, den_means = [], []
        for g in rng.integers(0, n, size=n):
            idx = rng.integers(0, nums[g].size, nums[g].size)
            num_means.append(nums[g][idx].mean())
            den_means.append(dens[g][idx].mean())
        stats[b] = ratio(float(np.mean(num_means)), float(np.mean(den_means)))
    point = ratio(float(np.mean([a.mean() for a in nums])), float(np.mean([a.mean() for a in dens])))
    finite = stats[np.isfinite(stats)]
    if finite.size == 0:
        return Estimate(point, float("nan"), float("nan"))
    lo, hi = _interval(finite, level)
    return Estimate(point, lo, hi)
