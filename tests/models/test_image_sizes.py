"""Image-token expansion agrees with each model's feature count for awkward image shapes (the
model raises when the placeholder count and the features differ)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from safegap.data.images import noise_image
from safegap.models import VLM
from safegap.testing import FAMILIES as TINY_FAMILIES

SHAPES = ((8, 200), (200, 8), (33, 33), (64, 64), (5, 7), (130, 90))


@pytest.mark.parametrize("family", sorted(TINY_FAMILIES))
def test_awkward_image_shapes_forward(family: str, tiny_vlm: Callable[[str], VLM]) -> None:
    vlm = tiny_vlm(family)
    texts = ["describe the image ."] * len(SHAPES)
    batch = vlm.build_inputs(texts, [noise_image(size, seed=i) for i, size in enumerate(SHAPES)])
    with torch.inference_mode():
        logits = vlm.model(**batch).logits
    assert torch.isfinite(logits).all()
