"""LLaVA-1.5 (``LlavaForConditionalGeneration``): the processor expands ``<image>`` itself."""

from __future__ import annotations

from safegap.models.adapter import VLMAdapter, register_adapter


@register_adapter
class LlavaAdapter(VLMAdapter):
    family = "llava"
    model_types = ("llava",)
