"""Mllama / Llama-3.2-Vision (``MllamaForConditionalGeneration``).

The image enters through cross-attention layers that sit in the same ``layers`` list as the
self-attention ones; ``<|image|>`` stays a single token (it is not expanded). On text-only batches
the model skips the cross-attention layers entirely, so hooks on them do not fire there
(:meth:`MllamaAdapter.skipped_layers` says so; ``safegap.probe.record`` then reports the
preceding layer's output, which is what the skipped layer would pass on).

Mixed batches are refused: in a batch with images the cross-attention layers also run for a
text-only row, and although their MLP output is masked out for such rows, their attention output
is not, so the row no longer computes what it computes alone (max logit difference 0.03 on the
tiny checkpoint).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from PIL import Image

from safegap.models.adapter import VLMAdapter, register_adapter


@register_adapter
class MllamaAdapter(VLMAdapter):
    family = "mllama"
    model_types = ("mllama",)
    image_token_names = ("<|image|>",)
    image_placeholder = "<|image|>"
    supports_mixed_batches = False

    @property
    def cross_attention_layers(self) -> list[int]:
        """Indices (into :attr:`decoder_layers`) of the layers that attend to the image."""
        return [int(i) for i in self.text_config.cross_attention_layers]

    def skipped_layers(self, batch: Mapping[str, Any]) -> frozenset[int]:
        """The cross-attention layers, on a batch without images."""
        has_image = batch.get("pixel_values") is not None or batch.get("cross_attention_mask") is not None
        return frozenset() if has_image else frozenset(self.cross_attention_layers)

    def _processor_images(self, rows: list[Image.Image | None]) -> Any:
        return [[img] for img in rows if img is not None]
