"""PaliGemma 1/2 (``PaliGemmaForConditionalGeneration``): a prefix-LM without a chat template.

The prompt is ``<image>`` x N + ``<bos>`` + text + ``\\n`` (the text-only prompt drops the image
tokens), as ``PaliGemmaProcessor`` writes it; the adapter builds it itself because the processor
refuses text-only inputs. ``token_type_ids`` (all 0: the whole prompt is the prefix) gives the
prefix bidirectional attention, as in training. There is no system role.
"""

from __future__ import annotations

from typing import Any

from transformers import BatchFeature

from safegap.models.adapter import VLMAdapter, register_adapter


@register_adapter
class PaliGemmaAdapter(VLMAdapter):
    family = "paligemma"
    model_types = ("paligemma",)
    supports_system = False
    expands_image_tokens = True

    def render(self, text: str, has_image: bool, system: str | None = None) -> str:
        if system:
            raise ValueError("family paligemma has no system role; put the instruction in the text")
        image = self.image_placeholder if has_image else ""
        return f"{image}{self.tokenizer.bos_token}{text}\n"

    def image_token_text(self, image_inputs: Any, index: int) -> str:
        vision = self.model.config.vision_config
        return self.image_placeholder * int((vision.image_size // vision.patch_size) ** 2)

    def finish_inputs(self, batch: BatchFeature) -> BatchFeature:
        batch["token_type_ids"] = batch["input_ids"].new_zeros(batch["input_ids"].shape)
        return batch
