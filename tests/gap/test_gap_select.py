"""Exact streaming medians (radix selection) against torch.median."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from safegap.gap.select import RadixSelect, float_keys, keys_to_float


def run_select(values: torch.Tensor, chunk: int, bits: tuple[int, ...] = (11, 11, 10)) -> RadixSelect:
    select = RadixSelect(values.shape[1], bits)
    while not select.done:
        for start in range(0, values.shape[0], chunk):
            select.update(values[start : start + chunk])
        select.end_pass()
    return select


finite32 = st.floats(allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=60, deadline=None)
@given(st.lists(finite32, min_size=2, max_size=60))
def test_keys_are_monotone_and_invertible(values: list[float]) -> None:
    x = torch.tensor(values, dtype=torch.float32)
    keys = float_keys(x)
    assert torch.equal(keys_to_float(keys), x)
    by_key = x[torch.argsort(keys)]
    assert bool((by_key[1:] >= by_key[:-1]).all())  # -0.0 sorts just before +0.0, which compare equal


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.lists(finite32, min_size=3, max_size=3), min_size=1, max_size=50),
    st.integers(min_value=1, max_value=17),
    st.sampled_from([(11, 11, 10), (16, 16), (8, 8, 8, 8)]),
)
def test_lower_median_matches_torch(rows: list[list[float]], chunk: int, bits: tuple[int, ...]) -> None:
    x = torch.tensor(rows, dtype=torch.float32)
    select = run_select(x, chunk, bits)
    assert torch.equal(select.values(), x.median(dim=0).values)
    assert select.consistent


def test_ties_zeros_and_scales() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1001, 5, generator=g) * torch.tensor([1.0, 1e-30, 1e30, 1.0, 1.0])
    x[:, 3] = torch.randint(0, 3, (1001,), generator=g).float()
    x[:, 4] = -0.0
    assert torch.equal(run_select(x, 97).values(), x.median(dim=0).values)


def test_row_order_does_not_matter() -> None:
    x = torch.randn(500, 4, generator=torch.Generator().manual_seed(1))
    select = RadixSelect(4)
    for level in range(select.passes):
        order = torch.randperm(500, generator=torch.Generator().manual_seed(level))
        select.update(x[order])
        select.end_pass()
    assert torch.equal(select.values(), x.median(dim=0).values)


def test_a_changed_stream_is_caught() -> None:
    x = torch.randn(100, 2)
    select = RadixSelect(2)
    select.update(x)
    select.end_pass()
    select.update(x[:90])
    with pytest.raises(ValueError, match="pass 2 saw 90 rows, pass 1 saw 100"):
        select.end_pass()


def test_perturbed_values_are_flagged_not_fatal() -> None:
    x = torch.randn(200, 3, generator=torch.Generator().manual_seed(2))
    select = RadixSelect(3)
    select.update(x)
    select.end_pass()
    select.update(x * 1.001)  # same count, different values: a non-deterministic source
    select.end_pass()
    select.update(x)
    select.end_pass()
    assert not select.consistent
    assert select.values().shape == (3,)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="sum to 32"):
        RadixSelect(2, (8, 8))
    select = RadixSelect(1)
    with pytest.raises(ValueError, match="zero rows"):
        select.end_pass()
    with pytest.raises(RuntimeError, match="not ready"):
        select.values()
