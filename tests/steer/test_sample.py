"""Sample-level CMRM: the fused 3B-row prefill equals the reference with separate passes."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from safegap.data.images import noise_image
from safegap.models import VLM
from safegap.models.generation import generate_ids
from safegap.steer import generate_sample_level, sample_level_ids, sample_shifts
from safegap.steer.anchors import corrupted_image
from safegap.steer.sample import Layout, _truncate_after_eos, can_fuse, shared_prefix_shifts

from .conftest import FAMILIES, no_hooks_left

TEXTS = ["how do i make a cake ?", "describe the image .", "tell me about the picture please"]


def batch(vlm: VLM) -> tuple[list[str], list]:
    middle = None if vlm.adapter.supports_mixed_batches else noise_image((48, 40), seed=9)
    return TEXTS, [noise_image((48, 40), seed=1), middle, noise_image((48, 40), seed=2)]


@pytest.mark.parametrize("layout", ["fused", "text_first", "shared_prefix"])
@pytest.mark.parametrize("family", FAMILIES)
def test_layouts_equal_separate_passes(
    tiny_vlm_factory: Callable[[str], VLM], family: str, layout: Layout
) -> None:
    vlm = tiny_vlm_factory(family)
    texts, images = batch(vlm)
    if layout == "fused" and not can_fuse(vlm):
        with pytest.raises(ValueError, match="layout 'fused' needs"):
            sample_level_ids(vlm, texts, images, layout=layout)
        pytest.skip(f"{family}: text-only rows are not exact in mixed batches, so 'fused' is refused")
    if layout == "shared_prefix":
        image_rows = [k for k, img in enumerate(images) if img is not None]
        blank = [corrupted_image("blank", images[k], texts[k]) for k in image_rows]
        plan = shared_prefix_shifts(vlm, [texts[k] for k in image_rows], blank, [0])
        if plan is None:
            assert family in {"paligemma", "mllama"} or hasattr(vlm.model.model, "rope_deltas"), family
            pytest.skip(f"{family}: no shareable prefix, 'shared_prefix' falls back to 'separate'")
    fused_shifts: dict[int, torch.Tensor] = {}
    fused = sample_level_ids(
        vlm, texts, images, alpha=20.0, max_new_tokens=8, shifts_out=fused_shifts, layout=layout
    )
    reference_shifts = sample_shifts(vlm, texts, images)
    reference = sample_level_ids(vlm, texts, images, alpha=20.0, max_new_tokens=8, layout="separate")
    assert torch.equal(fused, reference)
    assert sorted(fused_shifts) == sorted(reference_shifts)
    for i, ref in reference_shifts.items():
        assert torch.allclose(fused_shifts[i], ref, rtol=1e-4, atol=1e-5), i
        assert ref.abs().sum() > 0
    if vlm.adapter.supports_mixed_batches:
        assert torch.equal(reference_shifts[0][1], torch.zeros_like(reference_shifts[0][1]))  # text-only row
    unsteered = generate_ids(vlm, vlm.build_inputs(texts, images), 8)
    assert not torch.equal(fused[:, : unsteered.shape[1]], unsteered)  # the shift does something
    assert no_hooks_left(vlm)


@pytest.mark.parametrize("family", FAMILIES)
def test_alpha_zero_sample_level_matches_unsteered_tokens(
    tiny_vlm_factory: Callable[[str], VLM], family: str
) -> None:
    """Not bit-identical by construction (the originals ride in a larger batch), but greedy tokens
    agree; trailing padding of finished rows is ignored."""
    vlm = tiny_vlm_factory(family)
    texts, images = batch(vlm)
    plain = generate_ids(vlm, vlm.build_inputs(texts, images), 8)
    fused = sample_level_ids(vlm, texts, images, alpha=0.0, max_new_tokens=8)
    pad = vlm.tokenizer.pad_token_id
    width = max(plain.shape[1], fused.shape[1])

    def padded(ids: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(ids, (0, width - ids.shape[1]), value=pad)

    assert torch.equal(padded(_truncate_after_eos(plain, [], pad)), padded(fused))


def test_max_new_tokens_one_and_all_text_batches(llava: VLM) -> None:
    texts, images = batch(llava)
    one = sample_level_ids(llava, texts, images, max_new_tokens=1)
    assert one.shape == (3, 1)
    text_only = sample_level_ids(llava, TEXTS, None, max_new_tokens=5)
    assert torch.equal(text_only, generate_ids(llava, llava.build_inputs(TEXTS), 5))


def test_generate_sample_level_chunks_and_decodes(llava: VLM) -> None:
    texts, images = batch(llava)
    replies = generate_sample_level(llava, texts, images, max_new_tokens=5, batch_size=2, corrupt="noise")
    assert len(replies) == 3 and all(isinstance(r, str) for r in replies)
    ids = [
        sample_level_ids(llava, [t], [img], max_new_tokens=5, corrupt="noise")
        for t, img in zip(texts, images, strict=True)
    ]
    assert replies == [llava.tokenizer.decode(i[0], skip_special_tokens=True).strip() for i in ids]


def test_truncate_after_eos_pads_like_generate() -> None:
    ids = torch.tensor([[5, 2, 7, 8], [5, 6, 7, 8], [2, 9, 2, 9]])
    out = _truncate_after_eos(ids, [2], pad_id=0)
    assert out.tolist() == [[5, 2, 0, 0], [5, 6, 7, 8], [2, 0, 0, 0]]
    assert torch.equal(_truncate_after_eos(ids, [], 0), ids)


def test_unknown_layout(llava: VLM) -> None:
    with pytest.raises(ValueError, match="unknown layout 'packed'"):
        sample_level_ids(llava, TEXTS, None, layout="packed")  # type: ignore[arg-type]


def test_shared_prefix_falls_back_when_images_differ_in_size(tiny_vlm_factory: Callable[[str], VLM]) -> None:
    if "llava_next" not in FAMILIES:
        pytest.skip("needs the LLaVA-NeXT tiny model (dynamic resolution)")
    vlm = tiny_vlm_factory("llava_next")  # dynamic resolution: the sizes give different token counts
    texts = TEXTS[:2]
    images = [noise_image((48, 40), seed=1), noise_image((40, 96), seed=2)]
    blank = [corrupted_image("blank", img, t) for t, img in zip(texts, images, strict=True)]
    assert shared_prefix_shifts(vlm, texts, blank, [0]) is None
    shared = sample_level_ids(vlm, texts, images, alpha=20.0, max_new_tokens=6, layout="shared_prefix")
    assert torch.equal(
        shared, sample_level_ids(vlm, texts, images, alpha=20.0, max_new_tokens=6, layout="separate")
    )
