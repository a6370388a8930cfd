"""Streaming accumulators: counts, sums and second moments in float64, and a bounded token sample.

Memory is O(d^2) per accumulator whatever the number of tokens. Sums are taken around a shift
(the mean of the first chunk), which keeps the covariance ``(S2 - S1 S1^T / n) / (n - 1)`` free of
the cancellation a raw ``sum x x^T`` would suffer when the mean is large next to the spread
(hidden states often sit far from the origin).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from safegap.gap.metrics import mean_pairwise_cosine


class Moments:
    """Count, mean and covariance of a stream of ``(n, dim)`` rows.

    ``gemm_dtype`` is the dtype of the per-chunk product ``X^T X``; the running sums are always
    float64. float32 products are about twice as fast on CPU and, on the shifted data, agree
    with float64 to ~1e-7 relative (see docs/diagnostics.md).
    """

    def __init__(self, dim: int, device: str | torch.device = "cpu", gemm_dtype: torch.dtype = torch.float64):
        self.dim = dim
        self.device = torch.device(device)
        self.gemm_dtype = gemm_dtype
        self.count = 0
        self.shift: torch.Tensor | None = None
        self.s1 = torch.zeros(dim, dtype=torch.float64, device=self.device)
        self.s2 = torch.zeros(dim, dim, dtype=torch.float64, device=self.device)

    def _centred(self, rows: torch.Tensor) -> torch.Tensor:
        rows = rows.reshape(-1, self.dim).to(self.device, torch.float64)
        if self.shift is None:
            self.shift = rows.mean(dim=0)
        return rows - self.shift

    def _accumulate(self, rows: torch.Tensor, sign: float) -> None:
        if rows.numel() == 0:
            return
        centred = self._centred(rows)
        self.count += int(sign) * centred.shape[0]
        self.s1.add_(centred.sum(dim=0), alpha=sign)
        product = centred.to(self.gemm_dtype)
        self.s2.add_((product.T @ product).to(torch.float64), alpha=sign)

    def update(self, rows: torch.Tensor) -> None:
        """Add rows."""
        self._accumulate(rows, 1.0)

    def update_float32(self, rows: torch.Tensor) -> None:
        """Add float32 rows with the centring and the product in float32, summed into float64:
        no float64 copy of the chunk (the one-pass MIR's hot loop; shifted data keep the float32
        product's relative error near 1e-7)."""
        rows = rows.reshape(-1, self.dim).to(self.device, torch.float32)
        if rows.shape[0] == 0:
            return
        if self.shift is None:
            self.shift = rows.mean(dim=0, dtype=torch.float64).to(torch.float32).to(torch.float64)
        centred = rows - self.shift.to(torch.float32)
        self.count += centred.shape[0]
        self.s1 += centred.sum(dim=0, dtype=torch.float64)
        self.s2 += centred.T @ centred

    def remove(self, rows: torch.Tensor) -> None:
        """Take back rows that were added (MIR's outlier replacement removes them first)."""
        if rows.numel() and self.shift is None:
            raise ValueError("cannot remove rows from an empty accumulator")
        self._accumulate(rows, -1.0)

    def add_repeated(self, row: torch.Tensor, times: int) -> None:
        """Add ``times`` copies of one row (the replacement row of MIR's outlier step)."""
        if times == 0:
            return
        centred = self._centred(row.reshape(1, -1))[0]
        self.count += times
        self.s1.add_(centred, alpha=times)
        self.s2.add_(torch.outer(centred, centred), alpha=times)

    def merge(self, other: Moments) -> None:
        """Fold another accumulator of the same dimension into this one (order-free)."""
        if other.count == 0 or other.shift is None:
            return
        if self.shift is None:
            self.shift = other.shift.clone()
        delta = (other.shift - self.shift).to(self.device)
        s1_other = other.s1.to(self.device)
        # sum over other's rows of (x - c) = s1_other + n_other * delta, and similarly for the outer sum.
        self.s2.add_(
            other.s2.to(self.device)
            + torch.outer(s1_other, delta)
            + torch.outer(delta, s1_other)
            + other.count * torch.outer(delta, delta)
        )
        self.s1.add_(s1_other + other.count * delta)
        self.count += other.count

    def copy(self) -> Moments:
        out = Moments(self.dim, self.device, self.gemm_dtype)
        out.count = self.count
        out.shift = None if self.shift is None else self.shift.clone()
        out.s1 = self.s1.clone()
        out.s2 = self.s2.clone()
        return out

    def mean(self) -> torch.Tensor:
        if self.count <= 0 or self.shift is None:
            raise ValueError("mean of an empty accumulator")
        return self.shift + self.s1 / self.count

    def covariance(self, ddof: int = 1) -> torch.Tensor:
        """Covariance with ``count - ddof`` in the denominator (MIR uses the unbiased ddof=1)."""
        if self.count - ddof <= 0:
            raise ValueError(f"covariance needs more than {ddof} row(s), have {self.count}")
        mean_offset = self.s1 / self.count
        cov = (self.s2 - self.count * torch.outer(mean_offset, mean_offset)) / (self.count - ddof)
        return (cov + cov.T) / 2


class ScalarMoments:
    """Count, mean and unbiased standard deviation of a stream of scalars (token norms)."""

    def __init__(self) -> None:
        self.count = 0
        self.shift: float | None = None
        self.s1 = 0.0
        self.s2 = 0.0

    def update(self, values: torch.Tensor) -> None:
        values = values.reshape(-1).to(torch.float64)
        if values.numel() == 0:
            return
        if self.shift is None:
            self.shift = float(values.mean())
        centred = values - self.shift
        self.count += values.numel()
        self.s1 += float(centred.sum())
        self.s2 += float((centred * centred).sum())

    @property
    def total(self) -> float:
        return (self.shift or 0.0) * self.count + self.s1

    def mean(self) -> float:
        if self.count == 0 or self.shift is None:
            raise ValueError("mean of an empty accumulator")
        return self.shift + self.s1 / self.count

    def std(self) -> float:
        """Unbiased (n - 1) standard deviation, as ``torch.std``; NaN for fewer than two values."""
        if self.count < 2:
            return math.nan
        return math.sqrt(max(self.s2 - self.s1 * self.s1 / self.count, 0.0) / (self.count - 1))


class TokenReservoir:
    """A uniform random sample of at most ``capacity`` rows from a stream, with a group id per row.

    Each row gets a random priority from a seeded generator in arrival order; the ``capacity``
    rows of lowest priority are kept (bottom-k sampling). Memory is ``capacity x dim``.
    """

    def __init__(self, capacity: int, dim: int, seed: int = 0):
        if capacity <= 0:
            raise ValueError(f"capacity must be positive, got {capacity}")
        self.capacity = capacity
        self.dim = dim
        self.seen = 0
        self._generator = torch.Generator().manual_seed(seed)
        self.rows = torch.zeros(0, dim, dtype=torch.float32)
        self.groups = torch.zeros(0, dtype=torch.int64)
        self._priority = torch.zeros(0, dtype=torch.float64)

    def update(self, rows: torch.Tensor, groups: torch.Tensor) -> None:
        rows = rows.reshape(-1, self.dim).to("cpu", torch.float32)
        if rows.shape[0] != groups.numel():
            raise ValueError(f"{rows.shape[0]} rows but {groups.numel()} group ids")
        if rows.shape[0] == 0:
            return
        self.seen += rows.shape[0]
        priority = torch.rand(rows.shape[0], generator=self._generator, dtype=torch.float64)
        all_rows = torch.cat([self.rows, rows])
        all_groups = torch.cat([self.groups, groups.reshape(-1).to("cpu", torch.int64)])
        all_priority = torch.cat([self._priority, priority])
        if all_rows.shape[0] > self.capacity:
            keep = torch.topk(all_priority, self.capacity, largest=False).indices.sort().values
            all_rows, all_groups, all_priority = all_rows[keep], all_groups[keep], all_priority[keep]
        self.rows, self.groups, self._priority = all_rows, all_groups, all_priority


@dataclass
class ModalitySummary:
    count: int
    mean: torch.Tensor
    cov: torch.Tensor
    raw_mean: torch.Tensor
    mean_norm: float
    norm_std: float
    median_norm: float | None
    outliers: int
    unit_mean: torch.Tensor
    intra_cosine: float

    @classmethod
    def of(
        cls,
        moments: Moments,
        norms: ScalarMoments,
        raw_mean: torch.Tensor,
        median_norm: float | None,
        outliers: int,
        replacement: torch.Tensor | None,
        unit_sum: torch.Tensor,
    ) -> ModalitySummary:
        """The summary of one stream. ``moments`` hold the kept tokens; the ``outliers`` removed
        ones count again as ``replacement`` (the coordinate median), as the outlier correction
        defines; ``norms`` are all tokens' norms, ``unit_sum`` the sum of their unit vectors."""
        cleaned = moments
        if replacement is not None and outliers:
            cleaned = moments.copy()
            cleaned.add_repeated(replacement.to(moments.device, torch.float64), outliers)
        n = norms.count
        cov = cleaned.covariance() if n > 1 else torch.zeros(moments.dim, moments.dim, dtype=torch.float64)
        return cls(
            count=n,
            mean=cleaned.mean(),
            cov=cov,
            raw_mean=raw_mean,
            mean_norm=norms.mean(),
            norm_std=norms.std(),
            median_norm=median_norm,
            outliers=outliers,
            unit_mean=unit_sum / n,
            intra_cosine=mean_pairwise_cosine(unit_sum, n),
        )
