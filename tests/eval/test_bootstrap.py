"""Bootstrap intervals: clustered means, paired differences and ratios of paired means."""

from __future__ import annotations

import math

import numpy as np
import pytest

from safegap.eval.bootstrap import bootstrap_clustered, bootstrap_paired_difference, bootstrap_ratio


def test_clustered_mean_weighs_every_group_alike() -> None:
    est = bootstrap_clustered([[1.0] * 10, [0.0] * 2])
    assert est.mean == 0.5 and 0.0 <= est.lo <= 0.5 <= est.hi <= 1.0


def test_paired_difference_keeps_the_pairing() -> None:
    a = [[1.0, 0.0, 1.0, 0.0]] * 3
    est = bootstrap_paired_difference(a, a)
    assert (est.mean, est.lo, est.hi) == (0.0, 0.0, 0.0)  # identical pairs: no spread at all


def test_ratio_of_paired_means() -> None:
    rng = np.random.default_rng(1)
    den = [np.ones(40), np.ones(40)]
    num = [(rng.random(40) < 0.75).astype(float) for _ in range(2)]
    est = bootstrap_ratio(num, den)
    assert est.mean == pytest.approx(np.mean([n.mean() for n in num]))
    assert est.lo < est.mean < est.hi and est.hi - est.lo < 0.4
    exact = bootstrap_ratio([[0.5, 0.5]], [[1.0, 1.0]])
    assert (exact.mean, exact.lo, exact.hi) == (0.5, 0.5, 0.5)


def test_ratio_with_no_degradation_is_undefined() -> None:
    est = bootstrap_ratio([[0.0, 0.0]], [[0.0, 0.0]])
    assert math.isnan(est.mean) and math.isnan(est.lo)


def test_ratio_rejects_unpaired_groups() -> None:
    with pytest.raises(ValueError, match="paired"):
        bootstrap_ratio([[1.0, 0.0]], [[1.0]])
    with pytest.raises(ValueError, match="paired"):
        bootstrap_ratio([], [])
