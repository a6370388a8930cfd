"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL (``Qwen*VLForConditionalGeneration``).

Their processors need torchvision (the video processor), so the adapter runs the image processor
alone and writes ``<|image_pad|>`` ``t*h*w / merge**2`` times between ``<|vision_start|>`` and
``<|vision_end|>``, as the processor would. Every batch carries ``mm_token_type_ids`` (1 at image
tokens): Qwen2-VL and Qwen3-VL refuse image inputs without it, and Qwen2.5-VL silently falls back
to 1-D positions instead of multimodal RoPE. Qwen3-VL adds "deepstack" visual features into its
first decoder layers, so those layers' outputs at image positions include the injections.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import BatchFeature

from safegap.models.adapter import VLMAdapter, register_adapter


class _QwenVLAdapter(VLMAdapter):
    image_token_names = ("<|image_pad|>",)
    image_wrapper_token_names = ("<|vision_start|>", "<|vision_end|>")
    expands_image_tokens = True
    image_placeholder = "<|image_pad|>"

    def image_token_text(self, image_inputs: Any, index: int) -> str:
        merge = int(self.image_processor.merge_size)
        n_tokens = int(image_inputs["image_grid_thw"][index].prod()) // (merge * merge)
        return self.image_placeholder * n_tokens

    def finish_inputs(self, batch: BatchFeature) -> BatchFeature:
        image = self.image_token_mask(batch["input_ids"])
        batch["mm_token_type_ids"] = image.to(torch.int32)
        return batch


@register_adapter
class Qwen2VLAdapter(_QwenVLAdapter):
    family = "qwen2_vl"
    model_types = ("qwen2_vl",)


@register_adapter
class Qwen25VLAdapter(_QwenVLAdapter):
    family = "qwen2_5_vl"
    model_types = ("qwen2_5_vl",)


@register_adapter
class Qwen3VLAdapter(_QwenVLAdapter):
    family = "qwen3_vl"
    model_types = ("qwen3_vl",)
