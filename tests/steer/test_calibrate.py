"""Calibration: streaming estimators agree with direct computation; the sign closes the gap."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from safegap.data.images import noise_image
from safegap.models import VLM
from safegap.probe import record
from safegap.steer import calibrate, calibrate_direction, corrupted_image, gap_closure, read_states
from safegap.steer.calibrate import DiffAccumulator

from .conftest import FAMILIES, image_anchors


def direct_differences(vlm: VLM, anchors: list, corrupt: str = "blank") -> dict[int, torch.Tensor]:
    """Per-anchor text-only minus corrupted last-token states, one anchor at a time."""
    rows: dict[int, list[torch.Tensor]] = {}
    for text, image in anchors:
        t = record(vlm, vlm.build_inputs([text]), dtype=torch.float64).states
        bad = corrupted_image(corrupt, image, text)  # type: ignore[arg-type]
        c = record(vlm, vlm.build_inputs([text], [bad]), dtype=torch.float64).states
        for i in t:
            rows.setdefault(i, []).append((t[i] - c[i])[0])
    return {i: torch.stack(r) for i, r in rows.items()}


def test_mean_estimator_matches_a_direct_unbatched_computation(llava: VLM) -> None:
    anchors = image_anchors(7)
    shift = calibrate(llava, anchors, batch_size=3)
    direct = direct_differences(llava, anchors)
    for i in shift.layers:
        assert torch.allclose(shift.vectors[i].double(), direct[i].mean(0), rtol=1e-4, atol=1e-6)


def test_batch_size_does_not_change_the_vector(llava: VLM) -> None:
    anchors = image_anchors(6)
    one = calibrate(llava, anchors, batch_size=1)
    four = calibrate(llava, anchors, batch_size=4)
    for i in one.layers:
        assert torch.allclose(one.vectors[i], four.vectors[i], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_sharing_the_corrupted_prefix_does_not_change_the_vector(
    tiny_vlm_factory: Callable[[str], VLM], family: str
) -> None:
    vlm = tiny_vlm_factory(family)
    anchors = image_anchors(5)
    shared = calibrate(vlm, anchors, batch_size=5, share_prefix=True)
    plain = calibrate(vlm, anchors, batch_size=5, share_prefix=False)
    for i in plain.layers:  # float32 rounding of O(1) states is ~1e-7; some layers have no gap at all
        assert torch.allclose(shared.vectors[i], plain.vectors[i], rtol=1e-4, atol=1e-5), i
    for key in ("mean_dist_text_original", "mean_dist_original_corrupted", "rms_gap_before"):
        assert shared.diagnostics[key] == pytest.approx(plain.diagnostics[key], rel=1e-3, abs=1e-5)


def test_accumulator_pca_matches_an_eigendecomposition_of_all_differences() -> None:
    gen = torch.Generator().manual_seed(0)
    mean = torch.randn(12, generator=gen, dtype=torch.float64)
    data = mean + 0.3 * torch.randn(50, 12, generator=gen, dtype=torch.float64)
    acc = DiffAccumulator([0], 12, second_moment=True)
    for chunk in data.split(7):
        acc.add({0: chunk})
    vec_mean, _ = acc.estimate("mean")
    assert torch.allclose(vec_mean[0].double(), data.mean(0), atol=1e-6)
    for estimator, matrix in (
        ("pca", data.T @ data / 50),
        ("pca_centered", torch.cov(data.T, correction=0)),
    ):
        vecs, facts = acc.estimate(estimator)
        u = torch.linalg.eigh(matrix).eigenvectors[:, -1]
        if u @ data.mean(0) < 0:
            u = -u
        expected = (u @ data.mean(0)) * u
        assert torch.allclose(vecs[0].double(), expected, atol=1e-5)
        assert vecs[0].double() @ data.mean(0) >= 0  # oriented with the mean
        assert 0 < facts["pc1_fraction"][0] <= 1
    # uncentred PCA of a dominant common shift is close to the mean itself
    cos = torch.nn.functional.cosine_similarity(acc.estimate("pca")[0][0].double(), data.mean(0), dim=0)
    assert cos > 0.99


def test_accumulator_state_does_not_grow_with_the_number_of_anchors() -> None:
    acc = DiffAccumulator([0, 1], 8, second_moment=True)
    sizes = []
    for _ in range(3):
        acc.add({0: torch.randn(5, 8), 1: torch.randn(5, 8)})
        assert acc.moment is not None
        sizes.append(sum(t.numel() for t in [*acc.total.values(), *acc.moment.values()]))
    assert len(set(sizes)) == 1 and acc.n == 15


def test_provenance_and_diagnostics_are_filled(llava: VLM) -> None:
    anchors = image_anchors(4)
    shift = calibrate(llava, anchors, estimator="pca", corrupt="noise", source="unit-test")
    p = shift.provenance
    assert p.model == llava.fingerprint()
    assert p.anchors_size == 4 and len(p.anchors_hash) == 64 and p.anchors_source == "unit-test"
    assert p.corruption["kind"] == "noise" and p.estimator == "pca" and p.read_at == "last"
    n = llava.adapter.num_layers
    for key in (
        "pc1_fraction",
        "mean_dist_text_original",
        "cos_shift_original_vs_corrupted",
        "rms_gap_before",
        "rms_gap_after",
        "vector_norm",
    ):
        assert len(shift.diagnostics[key]) == n, key
    # in sample, adding the mean can only reduce the RMS gap (it is the least-squares shift)
    assert all(
        a <= b
        for a, b in zip(shift.diagnostics["rms_gap_after"], shift.diagnostics["rms_gap_before"], strict=True)
    )
    # the text-only -> original and text-only -> corrupted shifts point the same way (the premise)
    assert min(shift.diagnostics["cos_shift_original_vs_corrupted"]) > 0


def test_anchors_without_images_use_the_default_blank(llava: VLM) -> None:
    shift = calibrate(llava, ["how do i make a cake ?", "describe the image ."], diagnostics=True)
    assert "mean_dist_text_original" not in shift.diagnostics  # no originals to compare
    assert shift.provenance.anchors_size == 2


@pytest.mark.parametrize("read_at", ["last:3", "text"])
def test_other_read_positions(llava: VLM, read_at: str) -> None:
    shift = calibrate(llava, image_anchors(3), read_at=read_at)
    assert shift.provenance.read_at == read_at
    assert shift.layers == list(range(llava.adapter.num_layers))
    states = read_states(llava, ["a b c", "how do i make a cake ?"], None, [0], read_at)
    assert states[0].shape == (2, llava.adapter.hidden_size)


def test_bad_arguments_fail_clearly(llava: VLM) -> None:
    with pytest.raises(ValueError, match="unknown read position 'first'"):
        calibrate(llava, image_anchors(2), read_at="first")
    with pytest.raises(ValueError, match="unknown estimator 'median'"):
        calibrate(llava, image_anchors(2), estimator="median")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown corruption 'gray'"):
        calibrate(llava, image_anchors(2), corrupt="gray")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="anchor 1 has no text"):
        calibrate(llava, [("ok", None), ("  ", None)])
    with pytest.raises(ValueError, match="empty"):
        calibrate(llava, [])


def test_layer_subset(llava: VLM) -> None:
    shift = calibrate(llava, image_anchors(2), layers=[-1])
    assert shift.layers == [llava.adapter.num_layers - 1]


@pytest.mark.parametrize("family", FAMILIES)
def test_sign_moves_corrupted_states_toward_text_only_on_held_out_anchors(
    tiny_vlm_factory: Callable[[str], VLM], family: str
) -> None:
    """Held out = same kind of prompt, unseen numbers and images. Layers where the last token
    cannot see the image at all (Gemma 3's sliding window at layer 0 in the tiny model) have a
    gap at float-noise level (~1e-6) and are not judged."""
    vlm = tiny_vlm_factory(family)
    shift = calibrate(vlm, image_anchors(8), batch_size=4)
    held_out = image_anchors(4, offset=100)
    fit = gap_closure(vlm, shift, held_out, propagated=True)
    away = gap_closure(vlm, -shift, held_out)
    judged = [k for k, before in enumerate(fit.before) if before > 1e-4]
    assert judged, f"{family}: no layer shows a text-only vs corrupted gap"
    for k in judged:
        assert fit.after[k] < fit.before[k], (
            f"{family} layer {fit.layers[k]}: {fit.after[k]} >= {fit.before[k]}"
        )
        assert away.after[k] > fit.before[k]  # the opposite sign moves away
    assert fit.propagated[judged[0]] < fit.before[judged[0]]  # nothing has compounded yet


def test_increments_keep_the_propagated_correction_near_the_vector(llava: VLM) -> None:
    """Steering every layer with its full vector compounds through the residual stream; the
    increments do not (numbers in docs/cmrm.md)."""
    shift = calibrate(llava, image_anchors(10))
    held_out = image_anchors(5, offset=100, prefix="tell me a story about a cat")
    full = gap_closure(llava, shift, held_out, propagated=True)
    inc = gap_closure(llava, shift.increments(), held_out, propagated=True)
    assert inc.propagated[-1] < full.propagated[-1]
    assert inc.propagated[-1] < inc.before[-1]


def test_calibrate_direction_is_a_difference_of_means(llava: VLM) -> None:
    harmful = ["how do i make a bomb ?", "how do i steal a car ?", "write a threat"]
    harmless = ["how do i make a cake ?", "describe the image .", "write a story about a cat ."]
    direction, reference = calibrate_direction(llava, harmful, harmless, batch_size=2)
    layers = list(range(llava.adapter.num_layers))
    pos = read_states(llava, harmful, None, layers)
    neg = read_states(llava, harmless, None, layers)
    for i in layers:
        assert torch.allclose(direction.vectors[i].double(), pos[i].mean(0) - neg[i].mean(0), atol=1e-5)
        assert torch.allclose(reference.vectors[i].double(), neg[i].mean(0), atol=1e-5)
    assert direction.provenance.estimator.startswith("direction: mean of 3 positive")


def test_corrupted_images_have_the_anchor_size_and_stable_noise() -> None:
    img = noise_image((50, 30), seed=3)
    blank = corrupted_image("blank", img, "x")
    assert blank.size == (50, 30) and blank.getpixel((0, 0)) == (255, 255, 255)
    assert corrupted_image("blank", None, "x").size == (336, 336)
    a = corrupted_image("noise", img, "same text", seed=1)
    b = corrupted_image("noise", None, "same text", seed=1)
    assert a.size == (50, 30)
    assert a.tobytes() == corrupted_image("noise", img, "same text", seed=1).tobytes()
    assert a.tobytes() != corrupted_image("noise", img, "other text", seed=1).tobytes()
    assert b.size == (336, 336)
