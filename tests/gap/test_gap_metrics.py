"""Gap metrics: Fréchet distance, MIR (streaming vs direct), centroid, paired gaps, probe."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.linalg import sqrtm

from safegap.gap.metrics import (
    centroid_gap,
    frechet_distance,
    linear_probe,
    mir_direct,
    mir_layer_direct,
    paired_gap,
    reference_fast_terms,
    replace_outliers_direct,
    trace_sqrt_product,
)
from safegap.gap.streaming import GapAccumulator, TokenBatch, stream_gap


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_cov(d: int, rank: int, seed: int) -> torch.Tensor:
    a = torch.randn(d, rank, generator=gen(seed), dtype=torch.float64)
    return a @ a.T / rank


def token_layers(n_img: int, n_txt: int, d: int, layers: int, seed: int, outliers: bool = True):
    g = gen(seed)
    image = [torch.randn(n_img, d, generator=g) * 2 + 1 for _ in range(layers)]
    text = [torch.randn(n_txt, d, generator=g) * 0.5 - 0.3 for _ in range(layers)]
    if outliers:
        for layer in range(layers):
            image[layer][:: max(1, n_img // 7)] *= 9  # "massive activation" tokens
            text[layer][n_txt // 2] *= 12
    return image, text


def chunked(image, text, image_cuts: int, text_cuts: int):
    def source() -> Iterator[TokenBatch]:
        img_parts = [torch.tensor_split(x, image_cuts) for x in image]
        txt_parts = [torch.tensor_split(x, text_cuts) for x in text]
        for k in range(max(image_cuts, text_cuts)):
            yield TokenBatch(
                {i: img_parts[i][k] if k < image_cuts else image[i][:0] for i in range(len(image))},
                {i: txt_parts[i][k] if k < text_cuts else text[i][:0] for i in range(len(text))},
            )

    return source


def relclose(a: float, b: float, tol: float = 1e-6) -> bool:
    return abs(a - b) <= tol * max(abs(a), abs(b), 1e-12)


# -- Fréchet distance -----------------------------------------------------------------------------
def test_trace_sqrt_matches_scipy_for_full_rank() -> None:
    a, b = random_cov(12, 30, 0), random_cov(12, 40, 1)
    expected = float(np.trace(np.real(sqrtm(a.numpy() @ b.numpy()))))
    assert relclose(trace_sqrt_product(a, b), expected, 1e-9)


@pytest.mark.parametrize("rank_a,rank_b", [(3, 5), (1, 1), (5, 20)])
def test_trace_sqrt_is_stable_for_rank_deficient_covariances(rank_a: int, rank_b: int) -> None:
    # fewer tokens than dimensions: the exact value is the nuclear norm of A_c B_c^T
    d = 16
    x = torch.randn(rank_a + 1, d, generator=gen(2), dtype=torch.float64)
    y = torch.randn(rank_b + 1, d, generator=gen(3), dtype=torch.float64)
    xc = (x - x.mean(0)) / math.sqrt(x.shape[0] - 1)
    yc = (y - y.mean(0)) / math.sqrt(y.shape[0] - 1)
    expected = float(torch.linalg.svdvals(xc @ yc.T).sum())
    assert relclose(trace_sqrt_product(torch.cov(x.T), torch.cov(y.T)), expected, 1e-7)


def test_frechet_closed_form_for_commuting_covariances() -> None:
    mu_a, mu_b = torch.tensor([1.0, 2.0, 0.0]), torch.tensor([0.0, -1.0, 0.5])
    sd_a, sd_b = torch.tensor([1.0, 2.0, 0.5]), torch.tensor([3.0, 0.5, 0.5])
    expected = float(((mu_a - mu_b) ** 2).sum() + ((sd_a - sd_b) ** 2).sum())
    got = frechet_distance(mu_a, torch.diag(sd_a**2), mu_b, torch.diag(sd_b**2))
    assert relclose(got, expected, 1e-12)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 10), st.integers(1, 12), st.integers(1, 12), st.integers(0, 999))
def test_frechet_is_symmetric_and_zero_on_itself(d: int, ra: int, rb: int, seed: int) -> None:
    a, b = random_cov(d, ra, seed), random_cov(d, rb, seed + 1)
    mu_a = torch.randn(d, generator=gen(seed), dtype=torch.float64)
    mu_b = torch.randn(d, generator=gen(seed + 2), dtype=torch.float64)
    ab, ba = frechet_distance(mu_a, a, mu_b, b), frechet_distance(mu_b, b, mu_a, a)
    scale = float(torch.trace(a) + torch.trace(b) + 1)
    assert abs(ab - ba) <= 1e-9 * scale
    assert ab >= -1e-9 * scale
    assert abs(frechet_distance(mu_a, a, mu_a, a)) <= 1e-7 * scale


def test_reference_fast_formula_is_trace_of_the_product() -> None:
    a, b = random_cov(5, 8, 4), random_cov(5, 9, 5)
    terms = reference_fast_terms(torch.zeros(5), a, torch.zeros(5), b)
    assert relclose(terms.cross, float(torch.trace(a @ b)), 1e-12)
    assert relclose(terms.total, float(torch.trace(a) + torch.trace(b) - 2 * torch.trace(a @ b)), 1e-12)


# -- MIR ------------------------------------------------------------------------------------------
def test_outlier_rule_matches_the_published_definition() -> None:
    x = torch.tensor(
        [[1.0, 0.0], [0.0, 1.1], [0.9, 0.1], [0.2, 1.0]] * 5 + [[50.0, 50.0]], dtype=torch.float64
    )
    cleaned, replaced = replace_outliers_direct(x)
    assert replaced == 1
    assert torch.equal(cleaned[-1], x.median(dim=0).values)  # lower median, outlier included
    assert torch.equal(cleaned[:-1], x[:-1])


def test_direct_cross_term_routes_agree() -> None:
    image, text = token_layers(200, 60, 10, 1, 7)
    values = [mir_layer_direct(image[0], text[0], cross=c).total for c in ("eigh", "svd", "scipy")]
    assert relclose(values[0], values[1], 1e-9) and relclose(values[0], values[2], 1e-7)


@pytest.mark.parametrize("outliers", [True, False])
def test_streaming_mir_matches_direct(outliers: bool) -> None:
    image, text = token_layers(300, 70, 12, 3, 11)
    result = stream_gap(chunked(image, text, 7, 3), [0, 1, 2], 12, outliers=outliers, mode="exact")
    per_layer, mir = mir_direct(image, text, outliers=outliers)
    assert result.passes == (3 if outliers else 1)
    for got, want in zip(result.mir_per_layer, per_layer, strict=True):
        assert relclose(got, want)
    assert relclose(result.mir, mir)
    if outliers:
        assert all(layer.image_outliers > 0 and layer.text_outliers > 0 for layer in result.layers)
    assert result.reproducible


@settings(max_examples=25, deadline=None)
@given(
    st.integers(2, 60),
    st.integers(2, 40),
    st.integers(1, 9),
    st.integers(1, 6),
    st.integers(1, 6),
    st.integers(0, 999),
)
def test_streaming_mir_property(
    n_img: int, n_txt: int, d: int, img_cuts: int, txt_cuts: int, seed: int
) -> None:
    image, text = token_layers(n_img, n_txt, d, 2, seed)
    result = stream_gap(chunked(image, text, img_cuts, txt_cuts), [0, 1], d, mode="exact")
    per_layer, _ = mir_direct(image, text)
    for got, want in zip(result.mir_per_layer, per_layer, strict=True):
        assert abs(got - want) <= 1e-6 * max(abs(want), 1e-3)


def test_token_order_and_batch_split_do_not_change_the_result() -> None:
    image, text = token_layers(240, 50, 8, 2, 13)
    perm_i = torch.randperm(240, generator=gen(0))
    perm_t = torch.randperm(50, generator=gen(1))
    base = stream_gap(chunked(image, text, 1, 1), [0, 1], 8, mode="exact")
    shuffled = stream_gap(
        chunked([x[perm_i] for x in image], [x[perm_t] for x in text], 9, 4), [0, 1], 8, mode="exact"
    )
    for a, b in zip(base.layers, shuffled.layers, strict=True):
        for name in ("fd", "fd_reference_fast", "centroid_l2", "centroid_text_centric", "image_outliers"):
            assert relclose(float(getattr(a, name)), float(getattr(b, name)), 1e-9)


def test_identical_distributions_have_zero_gap() -> None:
    tokens = torch.randn(150, 6, generator=gen(21))
    result = stream_gap(chunked([tokens], [tokens.clone()], 4, 5), [0], 6, mode="exact")
    layer = result.layers[0]
    assert abs(layer.fd) <= 1e-9 * (layer.trace_image + layer.trace_text)
    assert layer.centroid_l2 < 1e-12 and layer.centroid_raw < 1e-12
    assert math.isnan(result.mir) or result.mir < -6  # log10 of ~0


def test_fd_symmetric_when_modalities_swap() -> None:
    # MIR itself is not symmetric (it scales by the *text* norm); the unscaled FD is
    image, text = token_layers(120, 90, 5, 1, 17, outliers=False)
    a = stream_gap(chunked(image, text, 3, 2), [0], 5, outliers=False).layers[0]
    b = stream_gap(chunked(text, image, 2, 3), [0], 5, outliers=False).layers[0]
    assert relclose(a.fd / a.scale**2, b.fd / b.scale**2, 1e-9)


def test_streaming_centroids_match_direct() -> None:
    image, text = token_layers(100, 40, 7, 1, 19, outliers=False)
    layer = stream_gap(chunked(image, text, 5, 2), [0], 7, mode="exact").layers[0]
    assert relclose(layer.centroid_l2, centroid_gap(image[0], text[0], "l2"), 1e-9)
    assert relclose(layer.centroid_text_centric, centroid_gap(image[0], text[0], "text_centric"), 1e-9)
    assert relclose(layer.centroid_raw, centroid_gap(image[0], text[0], "none"), 1e-9)


def test_accumulator_rejects_a_changed_stream() -> None:
    image, text = token_layers(50, 20, 4, 1, 23)
    acc = GapAccumulator([0], 4, mode="exact")
    acc.update(TokenBatch({0: image[0]}, {0: text[0]}))
    acc.end_pass()
    acc.update(TokenBatch({0: image[0][:40]}, {0: text[0]}))
    with pytest.raises(ValueError, match="must repeat the same stream"):
        acc.end_pass()


def test_non_finite_states_are_rejected() -> None:
    acc = GapAccumulator([0], 2)
    with pytest.raises(ValueError, match="NaN or inf"):
        acc.update(TokenBatch({0: torch.tensor([[1.0, float("nan")]])}, {0: torch.ones(1, 2)}))


# -- paired gaps and the probe --------------------------------------------------------------------
def test_paired_gap_matches_brute_force() -> None:
    a = torch.randn(9, 5, generator=gen(31), dtype=torch.float64)
    b = a + 0.3 * torch.randn(9, 5, generator=gen(32), dtype=torch.float64)
    gap = paired_gap(a, b)
    ua, ub = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)

    def d(x: torch.Tensor, y: torch.Tensor) -> float:
        return float(1 - (x @ y + 1) / 2)

    d_match = sum(d(ua[i], ub[i]) for i in range(9)) / 9
    d_a = sum(d(ua[i], ua[j]) for i in range(9) for j in range(9) if i != j) / 72
    d_b = sum(d(ub[i], ub[j]) for i in range(9) for j in range(9) if i != j) / 72
    assert relclose(gap.rmg, d_match / (d_match + (d_a + d_b) / 2), 1e-10)
    assert relclose(gap.l2i, float((ua - ub).norm(dim=1).mean()), 1e-12)


def test_paired_gap_of_identical_rows() -> None:
    a = torch.randn(6, 4, generator=gen(33))
    gap = paired_gap(a, a.clone())
    assert gap.l2i < 1e-12 and abs(gap.matched_cosine - 1) < 1e-12
    assert gap.rmg < 0.01  # D_match is set to 1e-3 when it is not positive


def test_probe_separates_separable_tokens_and_not_identical_ones() -> None:
    g = gen(41)
    a = torch.randn(400, 8, generator=g) + torch.tensor([3.0] + [0.0] * 7)
    b = torch.randn(400, 8, generator=g)
    groups_a = torch.arange(400) // 10
    groups_b = torch.arange(400) // 10
    separable = linear_probe(a, b, groups_a, groups_b)
    assert separable.accuracy > 0.95 and separable.split == "by_sample"
    same = linear_probe(
        torch.randn(400, 8, generator=g), torch.randn(400, 8, generator=g), groups_a, groups_b
    )
    assert same.balanced_accuracy < 0.7
    assert same.n_test + same.n_train == 800


def test_probe_without_groups_splits_by_token() -> None:
    result = linear_probe(torch.randn(50, 3), torch.randn(60, 3) + 5)
    assert result.split == "by_token" and result.accuracy > 0.9
