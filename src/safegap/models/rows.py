"""Batch rows: the per-row images argument every generate / encode call takes, and left padding
of per-row token tensors into one batch."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

#: Per-row images: ``None`` for an all-text batch, else one image (or ``None``) per row.
ImagesArg = Sequence[Image.Image | None] | None

#: Inputs with one entry per token (``(batch, seq, ...)``): re-padded when rows are assembled.
PER_TOKEN_KEYS = (
    "input_ids",
    "attention_mask",
    "token_type_ids",
    "mm_token_type_ids",
    "cross_attention_mask",
)


def per_row_images(images: ImagesArg, n_rows: int) -> list[Image.Image | None]:
    """Normalise the ``images`` argument to one entry per row, validating its length."""
    if images is None:
        return [None] * n_rows
    rows = list(images)
    if len(rows) != n_rows:
        raise ValueError(f"got {len(rows)} images for {n_rows} texts; pass one image (or None) per text")
    for i, img in enumerate(rows):
        if img is not None and not isinstance(img, Image.Image):
            raise TypeError(f"image {i} is a {type(img).__name__}, expected a PIL image or None")
    # An RGB image is passed as it is: ``convert`` would copy it, once per row and call.
    return [None if img is None else img if img.mode == "RGB" else img.convert("RGB") for img in rows]


def left_pad(rows: list[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """Stack per-row token tensors, padding on the left (pad id for ids, 0 elsewhere)."""
    width = max(len(r["input_ids"]) for r in rows)
    keys = [k for k in PER_TOKEN_KEYS if any(k in r for r in rows) and k != "attention_mask"]
    out: dict[str, torch.Tensor] = {}
    for key in keys:
        template = next(r[key] for r in rows if key in r)
        fill = pad_id if key == "input_ids" else 0
        padded = template.new_full((len(rows), width, *template.shape[1:]), fill)
        for i, r in enumerate(rows):
            if key in r and len(r[key]):
                padded[i, width - len(r[key]) :] = r[key]
        out[key] = padded
    lengths = torch.tensor([len(r["input_ids"]) for r in rows])
    out["attention_mask"] = (torch.arange(width) >= (width - lengths)[:, None]).long()
    return out
