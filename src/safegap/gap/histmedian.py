"""Coordinate-wise lower median of a token stream in one pass, from per-column histograms.

MIR replaces outlier tokens by the coordinate-wise median token. The exact streaming median
(:mod:`safegap.gap.select`) needs three passes over the tokens, i.e. three forward passes of the
model. Here the first ``warmup`` rows are kept: if the stream ends there the median is exact
(``torch.median``). Otherwise their 1st-99th percentile range, widened by a quarter on each side,
sets ``bins`` uniform bins per column, every row is counted once, and the median is interpolated
inside the bin holding its rank (uniform within the bin). The error is a fraction of one bin
width (about 1e-3 of a column's spread with 512 bins), and it reaches MIR only through the few
replaced rows (see docs/diagnostics.md for the measured effect).

A column whose median falls below or above its range (a stream that drifts after the warm-up)
needs a second pass: :attr:`needs_pass` says so, and that pass histograms the bin (or the open
end, bounded by the column's seen min/max) that holds the median, at the same resolution again.
"""

from __future__ import annotations

import torch

#: Quantiles of the warm-up rows that bound the histogram range, before widening.
_RANGE_QUANTILES = (0.01, 0.99)
_WIDEN = 0.25
#: Warm-up rows the range is read from.
_RANGE_ROWS = 512


class HistogramMedian:
    """Lower median of each column of a stream of ``(n, columns)`` float32 rows."""

    def __init__(self, columns: int, bins: int = 512, warmup: int = 2048, device: str | torch.device = "cpu"):
        if bins < 2 or warmup < 1:
            raise ValueError(f"bins must be >= 2 and warmup >= 1, got {bins} and {warmup}")
        self.columns = columns
        self.bins = bins
        self.device = torch.device(device)
        self.count = 0
        self.level = 0
        self._warm = torch.empty(warmup, columns, dtype=torch.float32, device=self.device)
        self._warm_rows = 0
        self._lo: torch.Tensor | None = None
        self._inv_width: torch.Tensor | None = None
        self._width: torch.Tensor | None = None
        self._counts = torch.zeros(0, dtype=torch.int64, device=self.device)
        self._offsets = torch.arange(columns, device=self.device, dtype=torch.int32) * (bins + 2)
        self._min = torch.full((columns,), float("inf"), device=self.device)
        self._max = torch.full((columns,), float("-inf"), device=self.device)
        self._median: torch.Tensor | None = None
        self._seen = 0

    @property
    def needs_pass(self) -> bool:
        return self._median is None and self.level == 1

    @property
    def done(self) -> bool:
        return self._median is not None

    def _set_range(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        span = hi - lo
        floor = torch.maximum(lo.abs(), hi.abs()) * 1e-6 + 1e-30
        width = torch.maximum(span, floor) / self.bins
        self._lo, self._width, self._inv_width = lo, width, 1.0 / width
        self._counts = torch.zeros(self.columns * (self.bins + 2), dtype=torch.int64, device=self.device)

    def _count(self, rows: torch.Tensor) -> None:
        assert self._lo is not None and self._inv_width is not None
        index = (rows - self._lo).mul_(self._inv_width).add_(1).clamp_(0, self.bins + 1).to(torch.int32)
        index += self._offsets
        self._counts += torch.bincount(index.view(-1), minlength=self._counts.numel())

    def update(self, rows: torch.Tensor) -> None:
        """Count one chunk (first pass) or histogram the median's bin (second pass)."""
        rows = rows.reshape(-1, self.columns).to(self.device, torch.float32)
        if rows.shape[0] == 0:
            return
        if self.level == 1:
            self._seen += rows.shape[0]
            self._count(rows)
            return
        if self.level > 1 or self._median is not None:
            raise RuntimeError("HistogramMedian already finished")
        self.count += rows.shape[0]
        torch.minimum(self._min, rows.amin(dim=0), out=self._min)
        torch.maximum(self._max, rows.amax(dim=0), out=self._max)
        if self._lo is None:
            room = self._warm.shape[0] - self._warm_rows
            take = min(room, rows.shape[0])
            self._warm[self._warm_rows : self._warm_rows + take] = rows[:take]
            self._warm_rows += take
            if take == rows.shape[0]:
                return
            warm = self._warm[: self._warm_rows]
            # the range needs no precision: the first rows, sorted along contiguous rows (a sort
            # down strided columns, or torch.quantile, costs more than the whole pass at d 512)
            ordered = warm[:_RANGE_ROWS].T.contiguous().sort(dim=1).values
            last = ordered.shape[1] - 1
            q_lo, q_hi = (ordered[:, round(q * last)] for q in _RANGE_QUANTILES)
            pad = (q_hi - q_lo) * _WIDEN
            self._set_range(q_lo - pad, q_hi + pad)
            self._count(warm)
            rows = rows[take:]
        self._count(rows)

    def _locate(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per column: bin holding the median's rank, rank within that bin, that bin's count."""
        counts = self._counts.view(self.columns, self.bins + 2)
        cumulative = counts.cumsum(dim=1)
        rank = (self.count - 1) // 2
        where = (cumulative <= rank).sum(dim=1).clamp(max=self.bins + 1)
        below = torch.where(where > 0, cumulative.gather(1, (where - 1).clamp(min=0)[:, None])[:, 0], 0)
        inside = counts.gather(1, where[:, None])[:, 0]
        return where, rank - below, inside

    def _interpolate(self, where: torch.Tensor, within: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
        assert self._lo is not None and self._width is not None
        fraction = (within.to(torch.float64) + 0.5) / inside.clamp(min=1).to(torch.float64)
        value = self._lo.double() + ((where - 1).double() + fraction) * self._width.double()
        return value.to(torch.float32)

    def end_pass(self) -> None:
        if self.level == 0:
            if self.count == 0:
                raise ValueError("cannot take the median of zero rows")
            if self._lo is None:  # the stream fit in the warm-up buffer: exact
                self._median = self._warm[: self._warm_rows].median(dim=0).values.clone()
                self._warm = self._warm.new_empty(0, self.columns)
                self.level = 2
                return
            self._warm = self._warm.new_empty(0, self.columns)
            where, within, inside = self._locate()
            self._median = self._interpolate(where, within, inside)
            outside = (where == 0) | (where == self.bins + 1)
            self.level = 1
            if bool(outside.any()):
                assert self._lo is not None and self._width is not None
                edge_lo = self._lo + (where - 1).to(torch.float32) * self._width
                lo = torch.where(where == 0, self._min, edge_lo)
                hi = torch.where(
                    where == self.bins + 1, self._max, self._lo + where.to(torch.float32) * self._width
                )
                hi = torch.where(where == 0, self._lo, hi)
                lo = torch.where(where == self.bins + 1, self._lo + self.bins * self._width, lo)
                self._median = None
                self._set_range(lo, torch.nextafter(hi, hi + 1))
            else:
                self.level = 2
            return
        if self.level == 1:
            if self._seen != self.count:
                raise ValueError(
                    f"the second pass saw {self._seen} rows, the first {self.count}; "
                    "the source must yield the same rows on every pass"
                )
            where, within, inside = self._locate()  # rounding at a bin edge may land outside: clamp
            self._median = self._interpolate(where.clamp(1, self.bins), within, inside)
            self._counts = self._counts.new_empty(0)
            self.level = 2
            return
        raise RuntimeError("HistogramMedian already finished")

    def values(self) -> torch.Tensor:
        """The (interpolated) lower median of each column, float32 ``(columns,)``."""
        if self._median is None:
            raise RuntimeError("median not ready")
        return self._median
