"""Agreement between judges: Cohen's kappa on paired binary verdicts.

Kappa corrects raw agreement for the agreement two judges would reach by chance given how often
each says "yes". It is undefined (``None``) when chance agreement is already 1, i.e. both judges
give one and the same label to every item.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Agreement:
    n: int
    observed: float | None
    kappa: float | None

    def as_dict(self) -> dict[str, object]:
        return {"n": self.n, "observed_agreement": self.observed, "kappa": self.kappa}


def cohen_kappa(a: Sequence[bool], b: Sequence[bool]) -> Agreement:
    """Kappa of two equally long label sequences."""
    if len(a) != len(b):
        raise ValueError(f"cohen_kappa: {len(a)} labels vs {len(b)}")
    n = len(a)
    if n == 0:
        return Agreement(0, None, None)
    observed = sum(x == y for x, y in zip(a, b, strict=True)) / n
    pa, pb = sum(map(bool, a)) / n, sum(map(bool, b)) / n
    chance = pa * pb + (1 - pa) * (1 - pb)
    kappa = None if chance >= 1.0 else (observed - chance) / (1 - chance)
    return Agreement(n, observed, kappa)
