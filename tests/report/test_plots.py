"""Report plots: legends name defense files by their name, many categories become horizontal bars,
and a measured 0 is drawn (not left blank)."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from safegap.report.plots import MAX_VERTICAL_GROUPS, category_bars, display_spec


def _rows(categories: list[str], mean: float) -> list[dict[str, object]]:
    est = {"mean": mean, "ci": [mean, mean]}
    return [
        {
            "category": c,
            "condition": "text",
            "defense": "cmrm:/runs/x/shift.safetensors,alpha=1",
            "over_refusal": est,
        }
        for c in ["all", *categories]
    ]


def _image(png: str | None) -> Image.Image:
    assert png is not None
    return Image.open(io.BytesIO(base64.b64decode(png))).convert("RGB")


def test_display_spec_keeps_file_names_only() -> None:
    assert display_spec("cmrm:/runs/x/shift.safetensors,alpha=1") == "cmrm:shift.safetensors,alpha=1"
    assert display_spec("system_prompt+cmrm:a/b.safetensors") == "system_prompt+cmrm:b.safetensors"
    assert display_spec("none") == "none" and display_spec("cmrm:s.safetensors") == "cmrm:s.safetensors"


def test_many_categories_are_drawn_as_horizontal_bars() -> None:
    def six_series(categories: list[str]) -> list[dict[str, object]]:
        return [
            {**row, "condition": cond, "defense": defense}
            for cond in ("text", "benign_image", "blank_image")
            for defense in ("none", "cmrm:s.safetensors")
            for row in _rows(categories, 0.5)
        ]

    few = _image(category_bars(six_series([f"c{i}" for i in range(4)]), "over_refusal", "few"))
    many = _image(
        category_bars(six_series([f"c{i}" for i in range(MAX_VERTICAL_GROUPS + 8)]), "over_refusal", "many")
    )
    assert few.width > few.height
    # 20 groups of 6 bars side by side would be about 30 inches wide and shrink to illegible on
    # the page; as rows the figure grows downwards instead, at a readable width
    assert many.height > many.width and many.width < 1.5 * few.width


def test_a_zero_rate_is_visible() -> None:
    def coloured(png: str | None) -> int:
        pixels = np.asarray(_image(png)).astype(int)
        # matplotlib's first colour (#1f77b4)
        return int((np.abs(pixels - np.array([31, 119, 180])).sum(axis=2) < 60).sum())

    assert category_bars(_rows([], 0.0), "over_refusal", "nothing") is None  # only "all": no plot
    # Two bars at 0: each is a coloured line at 0, far more than the legend's swatch alone
    # (about 100 pixels); a half-height bar fills tens of thousands.
    assert 400 < coloured(category_bars(_rows(["a", "b"], 0.0), "over_refusal", "zero")) < 5000
    assert coloured(category_bars(_rows(["a", "b"], 0.5), "over_refusal", "half")) > 20000
