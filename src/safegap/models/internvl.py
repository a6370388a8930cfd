"""InternVL (``InternVLForConditionalGeneration``, the Hugging Face format of InternVL 2.5/3).

Its processor needs torchvision (the video processor), so the adapter runs the image processor
alone with ``crop_to_patches=True`` (as the processor does) and writes, for each image,
``<img>`` + ``<IMG_CONTEXT>`` x (tokens per tile x tiles) + ``</img>`` in place of the template's
``<IMG_CONTEXT>``. Tokens per tile: ``(image_size / patch_size)**2 * downsample_ratio**2``.
"""

from __future__ import annotations

from typing import Any

from PIL import Image
from transformers import BatchFeature

from safegap.models.adapter import VLMAdapter, register_adapter


@register_adapter
class InternVLAdapter(VLMAdapter):
    family = "internvl"
    model_types = ("internvl",)
    image_token_names = ("<IMG_CONTEXT>",)
    image_wrapper_token_names = ("<img>", "</img>")
    expands_image_tokens = True
    image_placeholder = "<IMG_CONTEXT>"
    drop_input_keys = ("num_patches",)

    def tokens_per_tile(self) -> int:
        vision = self.model.config.vision_config
        size = vision.image_size if isinstance(vision.image_size, int) else vision.image_size[0]
        patch = vision.patch_size if isinstance(vision.patch_size, int) else vision.patch_size[0]
        return int((size // patch) ** 2 * self.model.config.downsample_ratio**2)

    def process_images(self, images: list[Image.Image]) -> BatchFeature:
        return self.image_processor(images=images, crop_to_patches=True, return_tensors="pt")  # type: ignore[no-any-return]

    def image_token_text(self, image_inputs: Any, index: int) -> str:
        tiles = int(image_inputs["num_patches"][index])
        return f"<img>{self.image_placeholder * (self.tokens_per_tile() * tiles)}</img>"
