"""Batched, left-padded, greedy-by-default generation through the adapter."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from safegap.models.adapter import ImagesArg, per_row_images

if TYPE_CHECKING:
    from safegap.models.loading import VLM


@torch.inference_mode()
def generate_ids(vlm: VLM, inputs: Any, max_new_tokens: int = 32, **kwargs: Any) -> torch.Tensor:
    """New token ids only (prompt stripped), shape ``(batch, <= max_new_tokens)``."""
    tok = vlm.tokenizer
    gen_kwargs: dict[str, Any] = dict(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tok.pad_token_id,
    )
    gen_kwargs.update(kwargs)
    out = vlm.model.generate(**inputs, **gen_kwargs)
    return out[:, inputs["input_ids"].shape[1] :]


def generate(
    vlm: VLM,
    texts: Sequence[str],
    images: ImagesArg = None,
    max_new_tokens: int = 32,
    system: str | None = None,
    batch_size: int = 8,
    **kwargs: Any,
) -> list[str]:
    """Replies to ``texts`` (one image or None per row), in order, decoded without special tokens.

    Families that cannot mix image and text-only rows in a batch get them in separate batches.
    """
    rows = per_row_images(images, len(texts))
    if vlm.adapter.supports_mixed_batches:
        groups = [list(range(len(texts)))]
    else:
        groups = [
            [i for i, img in enumerate(rows) if img is not None],
            [i for i, img in enumerate(rows) if img is None],
        ]
    replies: dict[int, str] = {}
    for group in groups:
        for start in range(0, len(group), batch_size):
            chunk = group[start : start + batch_size]
            chunk_images = [rows[i] for i in chunk]
            has_any = any(img is not None for img in chunk_images)
            inputs = vlm.build_inputs([texts[i] for i in chunk], chunk_images if has_any else None, system)
            new_ids = generate_ids(vlm, inputs, max_new_tokens, **kwargs)
            decoded = vlm.tokenizer.batch_decode(new_ids, skip_special_tokens=True)
            replies.update(zip(chunk, decoded, strict=True))
    return [replies[i].strip() for i in range(len(texts))]
