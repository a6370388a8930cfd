"""Mistral 3 (``Mistral3ForConditionalGeneration``: Mistral-Small-3.1, Pixtral vision tower).

Its processor (``PixtralProcessor``) requires torchvision, so the adapter runs the image processor
alone (with ``patch_size = vision patch x spatial_merge_size``, as the processor does) and writes,
per image, rows of ``[IMG]`` each ended by ``[IMG_BREAK]``, the last by ``[IMG_END]``. Only
``[IMG]`` carries image features; the break/end tokens are text embeddings (wrapper tokens).
"""

from __future__ import annotations

from typing import Any

from PIL import Image
from transformers import BatchFeature

from safegap.models.adapter import VLMAdapter, register_adapter


@register_adapter
class Mistral3Adapter(VLMAdapter):
    family = "mistral3"
    model_types = ("mistral3",)
    image_token_names = ("[IMG]",)
    image_wrapper_token_names = ("[IMG_BREAK]", "[IMG_END]")
    expands_image_tokens = True
    image_placeholder = "[IMG]"

    def _token_patch(self) -> int:
        config = self.model.config
        patch = config.vision_config.patch_size
        return int(patch if isinstance(patch, int) else patch[0]) * int(config.spatial_merge_size)

    def process_images(self, images: list[Image.Image]) -> BatchFeature:
        return self.image_processor(  # type: ignore[no-any-return]
            images=images, patch_size=self._token_patch(), return_tensors="pt"
        )

    def image_token_text(self, image_inputs: Any, index: int) -> str:
        height, width = (int(x) for x in image_inputs["image_sizes"][index])
        patch = self._token_patch()
        row = "[IMG]" * (width // patch)
        return "[IMG_BREAK]".join([row] * (height // patch)) + "[IMG_END]"
