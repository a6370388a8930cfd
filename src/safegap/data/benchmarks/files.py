"""Reading a benchmark's files: CSV, JSON and JSONL with errors naming the file and line, and
image files (found, listed, decoded). The errors of a benchmark live here too, so this module
needs nothing else of the package."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from safegap.errors import UserError, decode_utf8

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")


class BenchmarkError(ValueError):
    """A benchmark cannot be loaded at all (unknown name, missing file or column)."""


class ImageLoadError(ValueError):
    """One sample's image is missing or unreadable (an errored sample, not a fatal error)."""


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def find_image(path: Path) -> Path:
    """``path``, or the file of the same stem with another image suffix when only that exists
    (HarmBench's CSV names ``.jpg``/``.jpeg`` files that are saved as ``.png``)."""
    if path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
        return path
    for suffix in IMAGE_SUFFIXES:
        for candidate in (path.with_suffix(suffix), path.with_suffix(suffix.upper())):
            if candidate.is_file():
                return candidate
    return path


def open_image(path: Path) -> Image.Image:
    """Open and fully decode ``path`` as RGB, or raise :class:`ImageLoadError` naming it."""
    if not path.is_file():
        raise ImageLoadError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageLoadError(
            f"corrupt image {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from exc


def read_header(path: Path) -> list[str]:
    """The header row of the CSV at ``path`` (a BOM dropped); a missing file is the same error as
    :func:`read_csv` gives."""
    if not path.is_file():
        raise BenchmarkError(f"benchmark file not found: {path}")
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as handle:
        return next(csv.reader(handle), [])


def read_csv(path: Path, required: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    r"""``(line number, row)`` for each data row of a UTF-8 CSV with a header (a BOM is dropped).
    A missing file or column, an unterminated quote (which would swallow the rows after it) and a
    row with more fields than the header are :class:`BenchmarkError`\ s naming the file and line."""
    if not path.is_file():
        raise BenchmarkError(f"benchmark file not found: {path}")
    try:
        text = decode_utf8(path.read_bytes(), path)
    except UserError as exc:
        raise BenchmarkError(str(exc)) from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, [])
        missing = [c for c in required if c not in header]
        if missing:
            raise BenchmarkError(
                f"{path}: missing column(s) {', '.join(missing)} (header: {', '.join(header) or 'empty'})"
            )
        start = reader.line_num + 1
        for fields in reader:
            if len(fields) > len(header):
                raise BenchmarkError(
                    f"{path} line {start}: {len(fields)} fields but the header has {len(header)} "
                    "(an unquoted comma?)"
                )
            row = dict(zip(header, fields, strict=False))
            yield start, {k: row.get(k, "") for k in header}
            start = reader.line_num + 1
    except csv.Error as exc:
        where = f"line {start}" if "start" in locals() else "the header"
        hint = " (an unterminated quote?)" if "end of data" in str(exc) else ""
        raise BenchmarkError(f"{path} {where}: malformed CSV ({exc}){hint}") from None


def read_json(path: Path) -> Any:
    if not path.is_file():
        raise BenchmarkError(f"benchmark file not found: {path}")
    try:
        return json.loads(decode_utf8(path.read_bytes(), path))
    except UserError as exc:
        raise BenchmarkError(str(exc)) from None
    except json.JSONDecodeError as exc:
        raise BenchmarkError(f"{path}: not valid JSON ({exc})") from exc


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """``(line number, object or None, error or None)`` per non-empty line."""
    if not path.is_file():
        raise BenchmarkError(f"benchmark file not found: {path}")
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                yield (
                    number,
                    None,
                    f"{path} line {number}: not UTF-8 (invalid byte at column {exc.start + 1})",
                )
                continue
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                yield number, None, f"{path} line {number}: not valid JSON ({exc.msg})"
                continue
            if not isinstance(obj, dict):
                yield number, None, f"{path} line {number}: expected a JSON object"
                continue
            yield number, obj, None
