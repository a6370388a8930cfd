"""LLaVA-NeXT / LLaVA-1.6 (``LlavaNextForConditionalGeneration``): the processor expands ``<image>``
into the any-resolution feature count itself; forward also takes ``image_sizes``."""

from __future__ import annotations

from safegap.models.adapter import VLMAdapter, register_adapter


@register_adapter
class LlavaNextAdapter(VLMAdapter):
    family = "llava_next"
    model_types = ("llava_next",)
