"""Exact streaming medians with bounded memory: multi-pass radix selection on float32 keys.

MIR's outlier step needs the median token norm and the coordinate-wise median token. A median is
not a streaming statistic, but it is an order statistic of float32 values, and float32 values map
monotonically onto 32-bit integer keys. Selecting the k-th smallest key one digit at a time needs
one pass over the data per digit and one histogram of ``2**bits`` counters per column: with digits
of (11, 11, 10) bits a column's exact median costs three passes and 2,048 counters, whatever the
number of tokens. The result is bit-identical to ``torch.median`` on the float32 values (the lower
median for an even count).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

_SIGN = 1 << 31
_MASK32 = (1 << 32) - 1
#: Rows per histogram update; bounds the int64 temporaries to ``rows x columns`` per call.
_ROWS_PER_CHUNK = 1024


def float_keys(values: torch.Tensor) -> torch.Tensor:
    """int64 keys in ``[0, 2**32)`` whose order is the order of ``values`` as float32."""
    bits = values.to(torch.float32).contiguous().view(torch.int32).to(torch.int64) & _MASK32
    negative = bits >= _SIGN
    return torch.where(negative, _MASK32 - bits, bits + _SIGN)


def keys_to_float(keys: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`float_keys`."""
    keys = keys.to(torch.int64)
    bits = torch.where(keys >= _SIGN, keys - _SIGN, _MASK32 - keys)
    signed = torch.where(bits >= _SIGN, bits - (1 << 32), bits).to(torch.int32)
    return signed.view(torch.float32)


class RadixSelect:
    """Lower median of each column of a stream of ``(n, columns)`` rows, exact, in ``len(digit_bits)``
    passes over the same rows (same order not required, same multiset required).

    Memory is ``columns x 2**max(digit_bits)`` int32 counters. Call :meth:`update` for every chunk
    of a pass and :meth:`end_pass` after it; :attr:`done` turns true after the last pass.
    """

    def __init__(
        self, columns: int, digit_bits: Sequence[int] = (11, 11, 10), device: str | torch.device = "cpu"
    ):
        if sum(digit_bits) != 32 or any(b <= 0 or b > 16 for b in digit_bits):
            raise ValueError(
                f"digit_bits must be positive, at most 16 each, and sum to 32; got {tuple(digit_bits)}"
            )
        self.columns = columns
        self.digit_bits = tuple(digit_bits)
        self.device = torch.device(device)
        self.level = 0
        self.count: int | None = None
        #: False when a later pass saw a different multiset (e.g. non-deterministic GPU kernels).
        self.consistent = True
        self._prefix = torch.zeros(columns, dtype=torch.int64, device=self.device)
        self._rank = torch.zeros(columns, dtype=torch.int64, device=self.device)
        self._expected = torch.zeros(columns, dtype=torch.int64, device=self.device)
        self._offsets = torch.arange(columns, device=self.device, dtype=torch.int64)
        self._seen = 0
        self._counts = self._new_counts()

    @property
    def passes(self) -> int:
        return len(self.digit_bits)

    @property
    def done(self) -> bool:
        return self.level >= self.passes

    def _new_counts(self) -> torch.Tensor:
        bins = 1 << self.digit_bits[min(self.level, self.passes - 1)]
        return torch.zeros(self.columns * bins, dtype=torch.int32, device=self.device)

    def update(self, values: torch.Tensor) -> None:
        """Count one chunk of rows (``(n, columns)``, or ``(n,)`` for a single column)."""
        if self.done:
            raise RuntimeError("RadixSelect already finished all its passes")
        rows = values.reshape(-1, self.columns).to(self.device)
        self._seen += rows.shape[0]
        bits = self.digit_bits[self.level]
        shift = 32 - sum(self.digit_bits[: self.level + 1])
        offsets = self._offsets * (1 << bits)
        for start in range(0, rows.shape[0], _ROWS_PER_CHUNK):
            keys = float_keys(rows[start : start + _ROWS_PER_CHUNK])
            flat = ((keys >> shift) & ((1 << bits) - 1)) + offsets
            if self.level > 0:
                flat = flat[(keys >> (shift + bits)) == self._prefix]
            self._counts += torch.bincount(flat.reshape(-1), minlength=self._counts.numel()).to(torch.int32)

    def end_pass(self) -> None:
        """Fix this pass's digit of every column's median."""
        bits = self.digit_bits[self.level]
        counts = self._counts.view(self.columns, 1 << bits).to(torch.int64)
        if self.level == 0:
            if self._seen == 0:
                raise ValueError("cannot take the median of zero rows")
            self.count = self._seen
            self._rank.fill_((self._seen - 1) // 2)
        else:
            if self._seen != self.count:
                raise ValueError(
                    f"pass {self.level + 1} saw {self._seen} rows, pass 1 saw {self.count}; "
                    "the source must yield the same rows on every pass"
                )
            matched = counts.sum(dim=1)
            if not torch.equal(matched, self._expected):
                self.consistent = False
                self._rank = torch.minimum(self._rank, (matched - 1).clamp(min=0))
        cumulative = counts.cumsum(dim=1)
        digit = (cumulative <= self._rank[:, None]).sum(dim=1).clamp(max=(1 << bits) - 1)
        below = torch.where(digit > 0, cumulative.gather(1, (digit - 1).clamp(min=0)[:, None])[:, 0], 0)
        self._expected = counts.gather(1, digit[:, None])[:, 0]
        self._rank = self._rank - below
        self._prefix = (self._prefix << bits) | digit
        self.level += 1
        self._seen = 0
        self._counts = self._new_counts() if not self.done else torch.zeros(0, dtype=torch.int64)

    def values(self) -> torch.Tensor:
        """The lower median of each column as float32 ``(columns,)``; only after the last pass."""
        if not self.done:
            raise RuntimeError(f"median not ready: {self.passes - self.level} pass(es) left")
        return keys_to_float(self._prefix)
