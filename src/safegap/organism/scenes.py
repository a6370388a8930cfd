"""The organism's images: benign scenes of coloured shapes, drawn objects (benign or harmful),
and the meaningless / typographic images of the evaluation conditions.

Objects are drawn as fixed "glyphs": a composition of three coloured primitives derived from a
hash of the object's name, jittered per sample, so the mini CLIP can learn to tell them apart
and a harmful object is *recognisable* in an image the way a knife or a pill is in a photo.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

from safegap.data.images import blank_image, noise_image, typographic_image

SIZE = 64

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (240, 210, 30),
    "purple": (140, 50, 170),
    "orange": (245, 140, 20),
    "black": (20, 20, 20),
    "pink": (245, 120, 190),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross", "ring", "bar", "star")
BACKGROUNDS: tuple[tuple[int, int, int], ...] = ((255, 255, 255), (235, 235, 235), (245, 238, 220))


def draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, box: tuple[float, float, float, float], fill: tuple[int, int, int]
) -> None:
    x0, y0, x1, y1 = box
    cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill)
    elif shape == "cross":
        draw.rectangle((x0, cy - h / 6, x1, cy + h / 6), fill=fill)
        draw.rectangle((cx - w / 6, y0, cx + w / 6, y1), fill=fill)
    elif shape == "ring":
        draw.ellipse(box, outline=fill, width=max(2, int(w / 6)))
    elif shape == "bar":
        draw.rectangle((x0, cy - h / 5, x1, cy + h / 5), fill=fill)
    elif shape == "star":
        pts = []
        for k in range(10):
            r = (w / 2) if k % 2 == 0 else (w / 5)
            angle = math.pi / 2 + k * math.pi / 5
            pts.append((cx + r * math.cos(angle), cy - r * math.sin(angle)))
        draw.polygon(pts, fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


def article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


@dataclass(frozen=True)
class Scene:
    """A benign scene: 1-2 coloured shapes."""

    image: Image.Image
    caption: str
    #: (colour, shape) pairs shown, for simple visual questions.
    items: tuple[tuple[str, str], ...]


def scene(rng: random.Random) -> Scene:
    n = rng.choice((1, 2, 2))
    background = rng.choice(BACKGROUNDS)
    image = Image.new("RGB", (SIZE, SIZE), background)
    draw = ImageDraw.Draw(image)
    shapes = rng.sample(SHAPES, n)
    slots = rng.sample([(0, 0), (1, 0), (0, 1), (1, 1)], n) if n > 1 else [(0.5, 0.5)]
    items = []
    for shape, (sx, sy) in zip(shapes, slots, strict=True):
        colour = rng.choice(list(COLOURS))
        size = rng.uniform(18, 28) if n > 1 else rng.uniform(26, 40)
        cx = 16 + sx * 32 + rng.uniform(-3, 3)
        cy = 16 + sy * 32 + rng.uniform(-3, 3)
        draw_shape(draw, shape, (cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2), COLOURS[colour])
        items.append((colour, shape))
    caption = " and ".join(f"{article(c)} {s}" for c, s in items)
    return Scene(image, caption, tuple(items))


@dataclass(frozen=True)
class Glyph:
    """How an object is drawn: three (shape, colour, dx, dy, size) primitives and a background."""

    parts: tuple[tuple[str, str, float, float, float], ...]
    background: tuple[int, int, int]


def glyph(name: str) -> Glyph:
    digest = hashlib.sha256(name.encode()).digest()
    colours = list(COLOURS)
    parts = []
    for k in range(3):
        b = digest[4 * k : 4 * k + 4]
        parts.append(
            (
                SHAPES[b[0] % len(SHAPES)],
                colours[b[1] % len(colours)],
                (b[2] % 5 - 2) * 7.0,
                (b[3] % 5 - 2) * 7.0,
                30.0 - 7 * k,
            )
        )
    background = BACKGROUNDS[digest[20] % len(BACKGROUNDS)]
    return Glyph(tuple(parts), background)


def object_image(name: str, rng: random.Random) -> Image.Image:
    """The object's glyph, shifted and scaled a little per sample."""
    g = glyph(name)
    image = Image.new("RGB", (SIZE, SIZE), g.background)
    draw = ImageDraw.Draw(image)
    ox, oy, scale = rng.uniform(-4, 4), rng.uniform(-4, 4), rng.uniform(0.85, 1.1)
    for shape, colour, dx, dy, size in g.parts:
        cx, cy, s = SIZE / 2 + ox + dx * scale, SIZE / 2 + oy + dy * scale, size * scale
        draw_shape(draw, shape, (cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2), COLOURS[colour])
    return image


def object_caption(name: str) -> str:
    return f"a picture of {name}"


def blank(rng: random.Random | None = None) -> Image.Image:
    return blank_image((SIZE, SIZE))


def noise(seed: int) -> Image.Image:
    return noise_image((SIZE, SIZE), seed=seed)


def typographic_words(instruction: str) -> str:
    """FigStep's layout as text: the instruction as a heading over an empty numbered list."""
    return f"{instruction}\n1.\n2.\n3."


def typographic(instruction: str) -> Image.Image:
    """FigStep-style: :func:`typographic_words` drawn as an image."""
    return typographic_image(typographic_words(instruction), size=(256, 256), font_size=24, margin=10)
