"""Images safegap makes itself: blank and noise images (CMRM's "meaningless" images), and
typographic images that render text (FigStep style).

Defaults, documented once here: images are 336x336 RGB (LLaVA-1.5's input size; processors
resize anyway); blank is pure white (255, 255, 255); noise is i.i.d. uniform RGB per pixel from
``numpy.random.default_rng(seed)``.
"""

from __future__ import annotations

import textwrap

import numpy as np
from PIL import Image, ImageDraw, ImageFont

DEFAULT_SIZE = (336, 336)
BLANK_COLOR = (255, 255, 255)


def blank_image(
    size: tuple[int, int] = DEFAULT_SIZE, color: tuple[int, int, int] = BLANK_COLOR
) -> Image.Image:
    """A single-colour image (white by default)."""
    return Image.new("RGB", size, color)


def noise_image(size: tuple[int, int] = DEFAULT_SIZE, seed: int = 0) -> Image.Image:
    """Uniform RGB noise, reproducible per ``seed``."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def typographic_image(
    text: str,
    size: tuple[int, int] = (760, 760),
    font_size: int = 40,
    margin: int = 30,
    background: tuple[int, int, int] = (255, 255, 255),
    color: tuple[int, int, int] = (0, 0, 0),
    wrap: int | None = None,
) -> Image.Image:
    """``text`` rendered black on white, wrapped, top-left aligned (FigStep's published layout:
    760x760, large font). Uses PIL's scalable default font, so no font file is needed."""
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=font_size)
    if wrap is None:
        char_width = max(1.0, draw.textlength("abcdefghij", font=font) / 10)
        wrap = max(1, int((size[0] - 2 * margin) // char_width))
    lines = []
    for paragraph in text.split("\n"):
        lines.extend(textwrap.wrap(paragraph, width=wrap) or [""])
    y = margin
    for line in lines:
        draw.text((margin, y), line, fill=color, font=font)
        y += int(font_size * 1.25)
    return image
