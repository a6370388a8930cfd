"""Streaming float64 moments: agreement with direct computation, merge, removal, batch split."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from safegap.gap.moments import Moments, ScalarMoments, TokenReservoir


def rows(n: int, d: int, seed: int, offset: float = 0.0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + offset


def test_mean_and_covariance_match_torch_even_far_from_origin() -> None:
    x = rows(300, 6, 0, offset=1e4)  # a large mean next to unit spread: shifted sums avoid cancellation
    m = Moments(6)
    for chunk in x.split(37):
        m.update(chunk)
    assert m.count == 300
    assert torch.allclose(m.mean(), x.mean(0), rtol=0, atol=1e-9)
    assert torch.allclose(m.covariance(), torch.cov(x.T), rtol=1e-10, atol=1e-10)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(2, 80),
    st.integers(1, 6),
    st.lists(st.integers(1, 30), min_size=1, max_size=6),
    st.integers(0, 99),
)
def test_batch_split_and_order_invariance(n: int, d: int, cuts: list[int], seed: int) -> None:
    x = rows(n, d, seed)
    whole = Moments(d)
    whole.update(x)
    split = Moments(d)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    start = 0
    for size in cuts * (n // max(1, sum(cuts)) + 1):
        split.update(x[perm][start : start + size])
        start += size
    split.update(x[perm][start:])
    assert split.count == n
    assert torch.allclose(split.mean(), whole.mean(), atol=1e-10)
    assert torch.allclose(split.covariance(), whole.covariance(), atol=1e-9)


def test_merge_equals_single_stream() -> None:
    a, b = rows(50, 4, 1, 3.0), rows(70, 4, 2, -2.0)
    left, right, both = Moments(4), Moments(4), Moments(4)
    left.update(a)
    right.update(b)
    both.update(torch.cat([a, b]))
    left.merge(right)
    assert left.count == 120
    assert torch.allclose(left.mean(), both.mean(), atol=1e-12)
    assert torch.allclose(left.covariance(), both.covariance(), atol=1e-10)


def test_remove_and_add_repeated_equal_a_replaced_matrix() -> None:
    x = rows(40, 3, 3)
    replacement = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    outliers = torch.zeros(40, dtype=torch.bool)
    outliers[[3, 17, 30]] = True
    m = Moments(3)
    m.update(x)
    m.remove(x[outliers])
    m.add_repeated(replacement, 3)
    replaced = x.clone()
    replaced[outliers] = replacement
    assert m.count == 40
    assert torch.allclose(m.covariance(), torch.cov(replaced.T), atol=1e-12)
    assert torch.allclose(m.mean(), replaced.mean(0), atol=1e-12)


def test_float32_products_stay_close() -> None:
    x = rows(500, 8, 4, offset=50.0)
    exact, fast = Moments(8), Moments(8, gemm_dtype=torch.float32)
    for chunk in x.split(64):
        exact.update(chunk)
        fast.update(chunk)
    assert torch.allclose(fast.covariance(), exact.covariance(), rtol=1e-5, atol=1e-5)


def test_scalar_moments_match_torch_std() -> None:
    values = torch.rand(101, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 7 + 1000
    s = ScalarMoments()
    for chunk in values.split(10):
        s.update(chunk)
    assert math.isclose(s.mean(), float(values.mean()), rel_tol=1e-12)
    assert math.isclose(s.std(), float(values.std()), rel_tol=1e-9)
    assert math.isclose(s.total, float(values.sum()), rel_tol=1e-12)
    one = ScalarMoments()
    one.update(torch.tensor([2.0]))
    assert math.isnan(one.std())


def test_empty_and_invalid() -> None:
    m = Moments(2)
    with pytest.raises(ValueError, match="empty"):
        m.mean()
    with pytest.raises(ValueError, match="empty accumulator"):
        m.remove(torch.ones(1, 2))
    m.update(torch.ones(1, 2))
    with pytest.raises(ValueError, match="more than 1"):
        m.covariance()


def test_reservoir_keeps_everything_under_capacity_and_caps_above() -> None:
    small = TokenReservoir(100, 3)
    x = rows(60, 3, 6).float()
    small.update(x[:25], torch.zeros(25, dtype=torch.int64))
    small.update(x[25:], torch.ones(35, dtype=torch.int64))
    assert torch.equal(small.rows, x)
    assert small.groups.tolist() == [0] * 25 + [1] * 35
    capped = TokenReservoir(50, 3, seed=1)
    big = rows(1000, 3, 7).float()
    for start in range(0, 1000, 128):
        capped.update(big[start : start + 128], torch.arange(start, min(start + 128, 1000)))
    assert capped.rows.shape == (50, 3) and capped.seen == 1000
    assert torch.equal(capped.rows, big[capped.groups])  # kept rows are real rows with their ids
    assert (
        capped.groups.float().mean() > 250 and capped.groups.float().mean() < 750
    )  # not the first chunk only
