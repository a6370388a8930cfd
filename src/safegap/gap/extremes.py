"""Bounded buffers for MIR's one-pass outlier step: every token norm, and the extreme-norm rows.

The 3-sigma rule needs the median and the standard deviation of all token norms (one float32 per
token, as the exact mode's median works on float32 norms; a d x d float64 moment matrix costs as
much as ``2 d**2`` tokens' norms) and, to take
the outliers' contributions back out of the moments, the outlier rows themselves. Those are the
rows of largest (or smallest) norm, so a fixed-size buffer of the ``capacity`` largest-norm rows
holds them all whenever there are at most ``capacity`` outliers above the median; the caller
checks that against the exact count and falls back to a second pass when it does not hold.
"""

from __future__ import annotations

import torch


class NormLog:
    """Every value of a stream of scalars, in a preallocated buffer that doubles when full
    (no per-chunk allocations: many small long-lived tensors fragment the heap)."""

    def __init__(self, device: str | torch.device = "cpu", capacity: int = 1 << 16):
        self.device = torch.device(device)
        self._values = torch.empty(capacity, dtype=torch.float32, device=self.device)
        self.count = 0

    def append(self, values: torch.Tensor) -> None:
        n = values.numel()
        if self.count + n > self._values.numel():
            grown = torch.empty(
                max(2 * self._values.numel(), self.count + n), dtype=torch.float32, device=self.device
            )
            grown[: self.count] = self._values[: self.count]
            self._values = grown
        self._values[self.count : self.count + n] = values.reshape(-1)
        self.count += n

    @property
    def values(self) -> torch.Tensor:
        return self._values[: self.count]


class ExtremeRows:
    """The ``capacity`` rows of largest key seen so far (key = norm, or minus the norm for the
    smallest), updated in place; ties keep the earlier row."""

    def __init__(
        self, capacity: int, dim: int, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ):
        self.capacity = capacity
        self.rows = torch.empty(capacity, dim, dtype=dtype, device=device)
        self.keys = torch.full((capacity,), float("-inf"), dtype=torch.float64, device=device)
        self.filled = 0

    def update(self, rows: torch.Tensor, keys: torch.Tensor) -> None:
        if self.capacity == 0 or rows.shape[0] == 0:
            return
        if self.filled == self.capacity:
            floor = self.keys.min()
            better = keys > floor
            if not bool(better.any()):
                return
            rows, keys = rows[better], keys[better]
        room = self.capacity - self.filled
        if room:
            take = min(room, rows.shape[0])
            self.rows[self.filled : self.filled + take] = rows[:take]
            self.keys[self.filled : self.filled + take] = keys[:take]
            self.filled += take
            rows, keys = rows[take:], keys[take:]
            if rows.shape[0] == 0:
                return
        merged = torch.cat([self.keys, keys])
        keep = torch.topk(merged, self.capacity, sorted=False).indices
        incoming = keep[keep >= self.capacity] - self.capacity
        if incoming.numel() == 0:
            return
        kept_old = torch.zeros(self.capacity, dtype=torch.bool, device=self.keys.device)
        kept_old[keep[keep < self.capacity]] = True
        slots = (~kept_old).nonzero()[:, 0][: incoming.numel()]
        self.rows[slots] = rows[incoming]
        self.keys[slots] = keys[incoming]

    def held(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows held and their keys."""
        return self.rows[: self.filled], self.keys[: self.filled]
