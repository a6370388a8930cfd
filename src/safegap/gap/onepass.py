"""One modality at one layer of the one-pass ("fast") MIR: the token stream is read once.

Per chunk it does one float32 GEMM summed into float64 (shifted second moments), one float64 norm
per token (kept, see :class:`~safegap.gap.extremes.NormLog`), a bounded buffer of the
largest- and smallest-norm rows and a histogram per coordinate
(:class:`~safegap.gap.histmedian.HistogramMedian`). At the end of the pass the median norm and
the std are exact, so the outlier set is MIR's own; its rows are taken back out of the moments
from the buffers. Two things can ask for a second pass (``passes`` turns 2): more outliers than
a buffer holds, or a coordinate median outside its histogram range. The only difference from the
exact definition is the replacement row: the coordinate medians are interpolated inside a
histogram bin (exact when the stream fits the median's warm-up buffer).
"""

from __future__ import annotations

import math

import torch

from safegap.gap.extremes import ExtremeRows, NormLog
from safegap.gap.histmedian import HistogramMedian
from safegap.gap.moments import ModalitySummary, Moments, ScalarMoments


def default_warmup(dim: int) -> int:
    """Rows kept for the median's range: about 8 MiB of float32, between 256 and 2048 rows."""
    return max(256, min(2048, (1 << 21) // max(dim, 1)))


class FastModalityStream:
    """Drop-in for :class:`safegap.gap.streaming.ModalityStream` (same ``update``/``end_pass``/
    ``summary``) that reads the stream once, twice in the rare cases above."""

    def __init__(
        self,
        dim: int,
        outliers: bool = True,
        device: str | torch.device = "cpu",
        gemm_dtype: torch.dtype = torch.float32,
        capacity: tuple[int, int] = (512, 64),
        bins: int = 512,
    ):
        self.dim = dim
        self.outliers = outliers
        self.device = torch.device(device)
        self.gemm_dtype = gemm_dtype
        self.moments = Moments(dim, device, torch.float64)
        self.norms = NormLog(self.device)
        self.norm_moments = ScalarMoments()
        self.unit_sum = torch.zeros(dim, dtype=torch.float64, device=self.device)
        self.pass_index = 0
        self.passes = 1
        self.outlier_count = 0
        self.reproducible = True
        self._raw_mean: torch.Tensor | None = None
        held = torch.float32 if gemm_dtype == torch.float32 else torch.float64
        self._high = ExtremeRows(capacity[0], dim, self.device, held) if outliers else None
        self._low = ExtremeRows(capacity[1], dim, self.device, held) if outliers else None
        self._median = HistogramMedian(dim, bins, default_warmup(dim), self.device) if outliers else None
        self._median_norm: float | None = None
        self._std = math.nan
        self._remove_in_pass = False
        self._pass_count = 0

    def update(self, rows: torch.Tensor) -> None:
        source = rows.reshape(-1, self.dim).to(self.device)
        if source.shape[0] == 0:
            return
        rows32 = source.to(torch.float32)
        if self.pass_index > 0:
            self._second_pass(source, rows32)
            return
        norms = torch.linalg.vector_norm(source, dim=-1, dtype=torch.float64)
        if not bool(torch.isfinite(norms).all()):  # a NaN or inf anywhere in a row makes its norm one
            raise ValueError("hidden states contain NaN or inf")
        inverse = 1.0 / norms.clamp(min=1e-300)
        if self.gemm_dtype == torch.float32:
            self.moments.update_float32(rows32)
            self.unit_sum += rows32.T @ inverse.to(torch.float32)
            kept = rows32
        else:
            kept = source.to(torch.float64)
            self.moments.update(kept)
            self.unit_sum += kept.T @ inverse
        self.norm_moments.update(norms)
        if self.outliers:
            assert self._high is not None and self._low is not None and self._median is not None
            keys = norms.to(torch.float32)  # the outlier rule compares float32 norms, as the exact mode
            self.norms.append(keys)
            self._high.update(kept, keys.double())
            self._low.update(kept, -keys.double())
            self._median.update(rows32)

    def _second_pass(self, source: torch.Tensor, rows32: torch.Tensor) -> None:
        self._pass_count += source.shape[0]
        assert self._median is not None
        if self._median.needs_pass:
            self._median.update(rows32)
        if self._remove_in_pass:
            assert self._median_norm is not None
            norms = torch.linalg.vector_norm(source, dim=-1, dtype=torch.float64).to(torch.float32).double()
            flagged = (norms - self._median_norm).abs() > 3 * self._std
            if bool(flagged.any()):
                self.moments.remove(source[flagged])

    def _first_end(self) -> None:
        if self.moments.count == 0:
            raise ValueError("no tokens were seen")
        self._raw_mean = self.moments.mean().clone()
        if not self.outliers:
            return
        assert self._high is not None and self._low is not None and self._median is not None
        norms = self.norms.values.double()
        self._median_norm = float(self.norms.values.median())
        self._std = self.norm_moments.std()
        limit = 3 * self._std
        high = int(((norms - self._median_norm) > limit).sum())
        low = int(((self._median_norm - norms) > limit).sum())
        self.outlier_count = high + low
        held_high, keys_high = self._high.held()
        held_low, keys_low = self._low.held()
        flag_high = (keys_high - self._median_norm) > limit
        flag_low = (self._median_norm + keys_low) > limit
        if int(flag_high.sum()) == high and int(flag_low.sum()) == low:
            picked = torch.cat([held_high[flag_high], held_low[flag_low]])
            if picked.shape[0]:
                self.moments.remove(picked)
        else:
            self._remove_in_pass = True
        self._high = self._low = None
        self._median.end_pass()
        if self._remove_in_pass or self._median.needs_pass:
            self.passes = 2

    def end_pass(self) -> None:
        if self.pass_index >= self.passes:
            raise RuntimeError("all passes already done")
        if self.pass_index == 0:
            self._first_end()
        else:
            if self._pass_count != self.norm_moments.count:
                raise ValueError(
                    f"pass 2 saw {self._pass_count} tokens, pass 1 saw {self.norm_moments.count}; "
                    "the token source must repeat the same stream"
                )
            assert self._median is not None
            if self._median.needs_pass:
                self._median.end_pass()
        self.pass_index += 1

    def summary(self) -> ModalitySummary:
        if self.pass_index < self.passes:
            raise RuntimeError(f"{self.passes - self.pass_index} pass(es) left before the summary")
        assert self._raw_mean is not None
        replacement = None
        if self.outliers and self.outlier_count:
            assert self._median is not None
            replacement = self._median.values()
        return ModalitySummary.of(
            self.moments,
            self.norm_moments,
            self._raw_mean,
            self._median_norm,
            self.outlier_count,
            replacement,
            self.unit_sum,
        )
