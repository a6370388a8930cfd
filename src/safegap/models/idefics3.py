"""Idefics3 and SmolVLM (``Idefics3ForConditionalGeneration``, ``SmolVLMForConditionalGeneration``).

Decoder layers live at ``model.text_model.layers``. An image becomes, per tile,
``<fake_token_around_image><row_r_col_c>`` + ``<image>`` x ``image_seq_len`` (rows separated by
``\\n``), then a global view ``\\n<fake_token_around_image><global-img><image>...<fake_token_around_image>``.
Idefics3's processor builds here; SmolVLM's needs torchvision (the video processor), so the SmolVLM
adapter runs the image processor and writes that text itself.

Their chat template writes ``User:<image>text`` with an image but ``User: text`` without, so the
text-only prompt is rendered as the image prompt minus ``<image>`` (they then differ only by the image).
"""

from __future__ import annotations

from typing import Any

from PIL import Image
from transformers import BatchFeature

from safegap.models.adapter import VLMAdapter, register_adapter

_TILE_MARKERS = tuple(f"<row_{r}_col_{c}>" for r in range(1, 10) for c in range(1, 10))


class _Idefics3Like(VLMAdapter):
    layers_path = "model.text_model.layers"
    final_norm_path = "model.text_model.norm"
    image_wrapper_token_names = ("<fake_token_around_image>", "<global-img>", *_TILE_MARKERS)
    text_only_strips_placeholder = True

    def _processor_images(self, rows: list[Image.Image | None]) -> Any:
        return [[img] if img is not None else [] for img in rows]


@register_adapter
class Idefics3Adapter(_Idefics3Like):
    family = "idefics3"
    model_types = ("idefics3",)


@register_adapter
class SmolVLMAdapter(_Idefics3Like):
    family = "smolvlm"
    model_types = ("smolvlm",)
    expands_image_tokens = True
    drop_input_keys = ("rows", "cols")

    def image_seq_len(self) -> int:
        config = self.model.config
        vision = config.vision_config
        return int((vision.image_size // vision.patch_size) ** 2 / config.scale_factor**2)

    def process_images(self, images: list[Image.Image]) -> BatchFeature:
        return self.image_processor(  # type: ignore[no-any-return]
            images=[[img] for img in images], return_row_col_info=True, return_tensors="pt"
        )

    def image_token_text(self, image_inputs: Any, index: int) -> str:
        rows, cols = int(image_inputs["rows"][index][0]), int(image_inputs["cols"][index][0])
        tile = self.image_placeholder * self.image_seq_len()
        global_view = f"<fake_token_around_image><global-img>{tile}<fake_token_around_image>"
        if rows == 0 and cols == 0:
            return global_view
        grid = "".join(
            "".join(f"<fake_token_around_image><row_{r}_col_{c}>{tile}" for c in range(1, cols + 1)) + "\n"
            for r in range(1, rows + 1)
        )
        return f"{grid}\n{global_view}"
