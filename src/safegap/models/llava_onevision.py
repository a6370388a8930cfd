"""LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``, Qwen2 language model).

Its processor needs torchvision (the video processor), so the adapter runs the image processor
alone and writes ``<image>`` once per visual feature: the base crop's patches, plus the unpadded
any-resolution grid with one newline feature per row, shrunk to ``anyres_max_N`` crops' worth when
larger (the count ``LlavaOnevisionModel.pack_image_features`` produces).
"""

from __future__ import annotations

import math
from typing import Any

from transformers.image_processing_utils import select_best_resolution

from safegap.models.adapter import VLMAdapter, register_adapter


def anyres_feature_count(
    original: tuple[int, int], crop: tuple[int, int], pinpoints: Any, side: int, max_crops: int
) -> int:
    """Visual features for one image of ``original`` (h, w) size cut into ``crop``-sized tiles whose
    vision-tower grid is ``side`` x ``side`` patches."""
    orig_h, orig_w = original
    best_h, best_w = select_best_resolution((orig_h, orig_w), pinpoints)
    grid_h, grid_w = side * (best_h // crop[0]), side * (best_w // crop[1])
    # The tiles are a letterboxed copy of the image; the model drops the padding rows or columns.
    if orig_w / orig_h > grid_w / grid_h:
        kept = int(round(orig_h * (grid_w / orig_w), 7))
        grid_h -= 2 * ((grid_h - kept) // 2)
    else:
        kept = int(round(orig_w * (grid_h / orig_h), 7))
        grid_w -= 2 * ((grid_w - kept) // 2)
    shrink = math.sqrt(grid_h * grid_w / (max_crops * side * side))
    if shrink > 1.1:
        grid_h, grid_w = int(grid_h // shrink), int(grid_w // shrink)
    return side * side + grid_h * grid_w + grid_h  # base crop + grid + one newline per grid row


@register_adapter
class LlavaOnevisionAdapter(VLMAdapter):
    family = "llava_onevision"
    model_types = ("llava_onevision",)
    expands_image_tokens = True

    def image_token_text(self, image_inputs: Any, index: int) -> str:
        config = self.model.config
        vision = config.vision_config
        original = tuple(int(x) for x in image_inputs["image_sizes"][index])
        crop = tuple(int(x) for x in image_inputs["pixel_values"].shape[-2:])
        max_crops = int(config.vision_aspect_ratio.removeprefix("anyres_max_"))
        n = anyres_feature_count(
            (original[0], original[1]),
            (crop[0], crop[1]),
            config.image_grid_pinpoints,
            vision.image_size // vision.patch_size,
            max_crops,
        )
        if config.vision_feature_select_strategy == "default":
            n -= 1  # the processor's convention for CLS-dropping towers
        return self.image_placeholder * n
