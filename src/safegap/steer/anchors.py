"""Anchor sets for calibration, their content hash, and CMRM's corrupted ("meaningless") images.

An anchor is ``(text, image or None)``. Anchor files (``load_anchors``):

* ``.txt`` -- one prompt per line; blank lines and lines starting with ``#`` are skipped; no images.
* ``.csv`` -- header row; the text column is the first of ``prompt``, ``text``, ``question``,
  ``instruction``, ``goal`` present (or ``text_column``); an optional image column (``image``,
  ``image_path`` or ``image_column``) holds a path relative to the CSV file's folder; an empty
  cell means no image.
* ``.jsonl`` -- one object per line with the same keys.
* ``SCHEME:ARG`` -- an anchor source, e.g. ``organism:calibration`` (the organism world's
  calibration split). Sources register with :func:`register_anchor_source` or declare
  themselves as entry points in ``safegap.anchor_sources`` (:mod:`safegap.plugins`, how the
  organism provides ``organism:``), so this module names no source.

Corrupted images (:func:`corrupted_image`): ``blank`` is a white (255, 255, 255) image of the
anchor image's own size (so families with dynamic resolution produce the same number of image
tokens); ``noise`` is uniform RGB noise of that size, seeded by ``seed + crc32(text)`` so it does
not depend on batch composition. Anchors without an image use 336x336
(``safegap.data.images.DEFAULT_SIZE``, LLaVA-1.5's input size).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from safegap.data.images import BLANK_COLOR, DEFAULT_SIZE, blank_image, noise_image
from safegap.errors import UserError, first_line, read_text
from safegap.plugins import ANCHOR_SOURCES_GROUP, Registry

Anchor = tuple[str, Image.Image | None]
CorruptionKind = Literal["blank", "noise"]
CorruptFn = Callable[[Image.Image | None, str], Image.Image]

TEXT_KEYS = ("prompt", "text", "question", "instruction", "goal")
IMAGE_KEYS = ("image", "image_path")

AnchorLoader = Callable[[str], Sequence[Anchor]]
#: scheme -> loader(ARG) returning anchors; plug-ins register or declare themselves.
ANCHOR_SOURCES: Registry[AnchorLoader] = Registry("anchor source", ANCHOR_SOURCES_GROUP)


def register_anchor_source(scheme: str, loader: AnchorLoader) -> None:
    """Make ``SCHEME:ARG`` anchor specs resolve through ``loader(ARG)``."""
    ANCHOR_SOURCES.register(scheme, loader)


def corrupted_image(kind: CorruptionKind, image: Image.Image | None, key: str, seed: int = 0) -> Image.Image:
    """The meaningless image for an anchor (see module docstring for sizes, colour and seeding)."""
    size = image.size if image is not None else DEFAULT_SIZE
    if kind == "blank":
        return blank_image(size, BLANK_COLOR)
    if kind == "noise":
        return noise_image(size, seed=seed + zlib.crc32(key.encode("utf-8")))
    raise ValueError(f"unknown corruption {kind!r}; use 'blank' or 'noise'")


def corruption_record(kind: str, seed: int = 0) -> dict[str, Any]:
    """Provenance for a corruption choice."""
    if kind == "blank":
        return {"kind": "blank", "color": list(BLANK_COLOR), "size": "anchor image size, else 336x336"}
    if kind == "noise":
        return {
            "kind": "noise",
            "distribution": "uniform RGB",
            "seed": f"{seed} + crc32(text)",
            "size": "anchor image size, else 336x336",
        }
    raise ValueError(f"unknown corruption {kind!r}; use 'blank' or 'noise'")


def anchors_hash(anchors: Iterable[Anchor]) -> tuple[str, int]:
    """``(sha256 hex, count)`` over texts and image pixels (size, mode and bytes)."""
    digest = hashlib.sha256()
    n = 0
    for text, image in anchors:
        digest.update(text.encode("utf-8") + b"\0")
        if image is None:
            digest.update(b"no-image\0")
        else:
            digest.update(f"{image.mode}:{image.size[0]}x{image.size[1]}\0".encode())
            digest.update(hashlib.sha256(image.tobytes()).digest())
        n += 1
    return digest.hexdigest(), n


def validate_anchors(anchors: Sequence[Any]) -> list[Anchor]:
    """Check the shape of an anchor list, naming the first bad item."""
    out: list[Anchor] = []
    for i, item in enumerate(anchors):
        if isinstance(item, str):
            out.append((item, None))
            continue
        if not isinstance(item, tuple | list) or len(item) != 2:
            raise ValueError(f"anchor {i} must be (text, image-or-None), got {type(item).__name__}")
        text, image = item
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"anchor {i} has no text")
        if image is not None and not isinstance(image, Image.Image):
            raise ValueError(f"anchor {i}: image is a {type(image).__name__}, expected a PIL image or None")
        out.append((text, image.convert("RGB") if image is not None else None))
    if not out:
        raise ValueError("the anchor set is empty")
    return out


def _pick(row: dict[str, Any], keys: Sequence[str], wanted: str | None, where: str) -> str | None:
    if wanted is not None:
        if wanted not in row:
            raise ValueError(f"{where}: no column {wanted!r} (columns: {', '.join(row)})")
        return wanted
    return next((k for k in keys if k in row), None)


def _open_image(path_text: str, base: Path, where: str) -> Image.Image:
    path = Path(path_text)
    if not path.is_absolute():
        path = base / path
    if not path.is_file():
        raise FileNotFoundError(f"{where}: image not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except (OSError, ValueError, SyntaxError) as exc:
        raise ValueError(f"{where}: corrupt image {path}: {first_line(exc)}") from None


def _rows_to_anchors(
    rows: Iterable[tuple[str, dict[str, Any]]], base: Path, text_column: str | None, image_column: str | None
) -> list[Anchor]:
    out: list[Anchor] = []
    for where, row in rows:
        tkey = _pick(row, TEXT_KEYS, text_column, where)
        if tkey is None:
            raise ValueError(f"{where}: no text field (expected one of {', '.join(TEXT_KEYS)})")
        text = str(row[tkey] or "").strip()
        if not text:
            raise ValueError(f"{where}: empty {tkey!r}")
        ikey = _pick(row, IMAGE_KEYS, image_column, where)
        cell = str(row.get(ikey) or "").strip() if ikey else ""
        out.append((text, _open_image(cell, base, where) if cell else None))
    return out


def load_anchors(
    spec: str | Path,
    text_column: str | None = None,
    image_column: str | None = None,
    limit: int | None = None,
) -> list[Anchor]:
    """Anchors from a file or a ``SCHEME:ARG`` source (formats in the module docstring)."""
    spec_text = str(spec)
    path = Path(spec_text)
    scheme, sep, arg = spec_text.partition(":")  # SCHEME:ARG; the source parses its ARG itself
    if sep and not path.exists() and scheme in ANCHOR_SOURCES:
        anchors = validate_anchors(ANCHOR_SOURCES[scheme](arg))
    elif sep and not path.exists() and scheme.isidentifier() and not path.suffix:
        raise UserError(
            f"anchors {spec_text!r}: no such file and no anchor source {scheme!r} (sources: {ANCHOR_SOURCES.known()})"
        )
    else:
        if not path.is_file():
            raise FileNotFoundError(f"anchor file not found: {path}")
        suffix = path.suffix.lower()
        base = path.parent
        if suffix == ".txt":
            lines = read_text(path).splitlines()
            anchors = [(ln.strip(), None) for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
        elif suffix == ".csv":
            reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
            rows = [(f"{path.name} row {i + 2}", dict(r)) for i, r in enumerate(reader)]
            anchors = _rows_to_anchors(rows, base, text_column, image_column)
        elif suffix in (".jsonl", ".json"):
            parsed = []
            for i, line in enumerate(read_text(path).splitlines()):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path.name} line {i + 1}: invalid JSON ({exc.msg})") from exc
                if not isinstance(obj, dict):
                    raise ValueError(f"{path.name} line {i + 1}: expected a JSON object")
                parsed.append((f"{path.name} line {i + 1}", obj))
            anchors = _rows_to_anchors(parsed, base, text_column, image_column)
        else:
            raise ValueError(
                f"anchor file {path.name}: unsupported type {suffix or '(none)'}; use .txt, .csv or .jsonl"
            )
        if not anchors:
            raise ValueError(f"anchor file {path} has no anchors")
    return anchors[:limit] if limit is not None else anchors
