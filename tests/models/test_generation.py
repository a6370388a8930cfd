"""``generate``: replies in input order, batched or not, for mixing and non-mixing families."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from PIL import Image

from safegap.data.images import noise_image
from safegap.models import VLM
from safegap.models.generation import generate

TEXTS = [
    "describe the image .",
    "how do i make a cake ?",
    "what is shown here ?",
    "write a story about a cat .",
]


@pytest.mark.parametrize("family", ["llava", "mllama"])
def test_generate_keeps_order_across_batches(tiny_vlm: Callable[[str], VLM], family: str) -> None:
    vlm = tiny_vlm(family)
    images: list[Image.Image | None] = [noise_image((40, 30), 1), None, noise_image((30, 40), 2), None]
    together = generate(vlm, TEXTS, images, max_new_tokens=4, batch_size=3)
    alone = [generate(vlm, [t], [img], max_new_tokens=4)[0] for t, img in zip(TEXTS, images, strict=True)]
    assert together == alone
    assert generate(vlm, [], None) == []
