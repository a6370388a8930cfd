"""The algebra of the three operators, on plain tensors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from safegap.steer.operators import add, check_direction, gate, gated, project, resolve_operator

seeds = st.integers(min_value=0, max_value=2**31 - 1)
alphas = st.floats(min_value=-3.0, max_value=3.0, allow_nan=False)


def rand(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@given(seeds, alphas)
@settings(max_examples=30, deadline=None)
def test_add_adds_alpha_v(seed: int, alpha: float) -> None:
    h, v = rand(seed, 4, 5, 16), rand(seed + 1, 16)
    assert torch.allclose(add(h, v, alpha), h + alpha * v)
    assert torch.equal(add(h, v, 0.0), h)


@given(seeds, alphas, st.floats(min_value=0.1, max_value=10.0))
@settings(max_examples=30, deadline=None)
def test_project_keeps_only_the_component_along_the_direction(seed: int, alpha: float, scale: float) -> None:
    h, v, u = rand(seed, 3, 16), rand(seed + 1, 16), rand(seed + 2, 16)
    out = project(h, v, alpha, direction=u)
    change = out - h
    unit = u / u.norm()
    # the change is alpha * (v . u_hat) u_hat: parallel to u, with that length
    assert torch.allclose(change, (alpha * (v @ unit) * unit).expand_as(change), atol=1e-10)
    # invariant to the direction's length and sign
    assert torch.allclose(project(h, v, alpha, direction=-scale * u), out, atol=1e-10)
    # a direction orthogonal to v leaves h unchanged; v itself gives plain add
    ortho = u - (u @ v) / (v @ v) * v
    assert torch.allclose(project(h, v, alpha, direction=ortho), h, atol=1e-9)
    assert torch.allclose(project(h, v, alpha, direction=v), add(h, v, alpha), atol=1e-10)


def test_gate_is_the_clamped_fraction_along_the_segment_from_reference() -> None:
    g = torch.tensor([2.0, 0.0, 0.0])
    ref = torch.tensor([1.0, 5.0, 0.0])
    points = torch.stack(
        [ref, ref + 0.5 * g, ref + g, ref + 3 * g, ref - g, ref + torch.tensor([0.0, 9.0, 9.0])]
    )
    assert gate(points, g, ref).squeeze(-1).tolist() == [0.0, 0.5, 1.0, 1.0, 0.0, 0.0]
    assert gate(points, g, ref, clamp=(-1.0, 2.0)).squeeze(-1).tolist() == [0.0, 0.5, 1.0, 2.0, -1.0, 0.0]
    assert gate(points, g).shape == (6, 1)


@given(seeds, alphas)
@settings(max_examples=30, deadline=None)
def test_gated_leaves_benign_states_exactly_untouched(seed: int, alpha: float) -> None:
    g, ref, v = rand(seed, 16), rand(seed + 1, 16), rand(seed + 2, 16)
    noise = rand(seed + 3, 8, 16)
    benign = ref - (noise @ g).abs()[:, None] * g / (g @ g) - 0.1 * g  # on the benign side of ref
    assert torch.equal(gated(benign, v, alpha, direction=g, reference=ref), benign)
    harmful = ref + 2 * g + noise - ((noise @ g)[:, None] / (g @ g)) * g  # projection exactly 2 -> gate 1
    assert torch.allclose(
        gated(harmful, v, alpha, direction=g, reference=ref), harmful + alpha * v, atol=1e-9
    )
    half = ref + 0.25 * g
    assert torch.allclose(
        gated(half, v, alpha, direction=g, reference=ref), half + 0.25 * alpha * v, atol=1e-9
    )


def test_gated_computes_the_gate_in_float32_for_half_precision() -> None:
    g = torch.ones(4096)
    h = torch.full((4096,), 0.5).to(torch.bfloat16)
    assert gate(h, g).dtype == torch.float32
    assert gate(h, g).item() == pytest.approx(0.5)


def test_operator_lookup_and_direction_checks() -> None:
    assert resolve_operator("add") is add
    assert resolve_operator(project) is project
    with pytest.raises(ValueError, match="unknown operator 'nope'"):
        resolve_operator("nope")
    with pytest.raises(ValueError, match="norm 0.0"):
        check_direction(torch.zeros(3))
    with pytest.raises(ValueError, match="norm nan"):
        check_direction(torch.tensor([float("nan"), 1.0]))
