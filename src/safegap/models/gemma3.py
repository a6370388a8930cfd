"""Gemma 3 (``Gemma3ForConditionalGeneration``): the processor replaces ``<start_of_image>`` with
``\\n\\n<start_of_image>`` + ``<image_soft_token>`` x ``mm_tokens_per_image`` + ``<end_of_image>\\n\\n``.

``token_type_ids`` (1 at image tokens) is always passed: Gemma 3 lets the tokens of one image
attend to each other bidirectionally, and the processor's text-only output would lack it.
"""

from __future__ import annotations

from typing import Any

from PIL import Image
from transformers import BatchFeature

from safegap.models.adapter import VLMAdapter, register_adapter


@register_adapter
class Gemma3Adapter(VLMAdapter):
    family = "gemma3"
    model_types = ("gemma3",)
    image_token_names = ("<image_soft_token>",)
    image_wrapper_token_names = ("<start_of_image>", "<end_of_image>")
    image_placeholder = "<start_of_image>"

    def _processor_images(self, rows: list[Image.Image | None]) -> Any:
        return [[img] for img in rows if img is not None]  # the processor wants one list per row

    def finish_inputs(self, batch: BatchFeature) -> BatchFeature:
        batch["token_type_ids"] = self.image_token_mask(batch["input_ids"]).long()
        return batch
