"""MMBench: multiple-choice questions in one TSV with the images inline as base64.

File: ``<data>/mmbench/MMBench_DEV_EN.tsv`` (or any MMBench TSV given as the spec path), with
a header row and the columns ``index, question, A, B, answer, image`` (required), ``C, D, ...``
(further options; an empty or ``nan`` cell ends the list), ``hint`` and ``category``
(optional). ``image`` is a base64-encoded picture, or the ``index`` of another row whose
image it shares. Images are decoded when a batch needs them (the file offset of each row is
kept, not the pixels). Category = ``category``. Scored by multiple-choice accuracy.

Circular evaluation (``circular=true``): each question is asked once per rotation of its
options (A B C D, B C D A, ...) and counts right only when every rotation is. Rows with
``index >= 1,000,000`` are the rotated copies MMBench's own circular files carry (the question
is ``index % 1,000,000``); a file without them gets the rotations generated here. Without
``circular``, those copies are left out.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from safegap.data.benchmarks.base import (
    BenchmarkError,
    ImageLoadError,
    ImageRef,
    Sample,
    SampleBuilder,
    register_benchmark,
)
from safegap.data.benchmarks.capability import (
    INSTRUCTION_HELP,
    LETTER_ANSWER,
    CapabilityBenchmark,
    all_benign,
    lettered,
    rotate_options,
)

REQUIRED = ("index", "question", "A", "B", "answer", "image")
#: csv's default field limit (128 KiB) is smaller than many base64 images.
FIELD_LIMIT = 1 << 30
ROTATION = 1_000_000
_LETTERS = "ABCDEFGHIJ"


def _cell(value: str) -> str:
    value = value.strip()
    return "" if value.lower() == "nan" else value


def _csv_error(path: Path, line: int, exc: Exception) -> BenchmarkError:
    return BenchmarkError(f"{path} line {line}: malformed TSV ({exc})")


def read_tsv_rows(path: Path) -> Iterator[tuple[int, int, dict[str, str]]]:
    """``(line number, byte offset, row)`` per data row of a UTF-8 TSV with a header; a
    missing file or column, a row wider than the header or a bad byte is a
    :class:`BenchmarkError` naming the file and line."""
    if not path.is_file():
        raise BenchmarkError(f"benchmark file not found: {path}")
    starts: list[tuple[int, int]] = []  # (line number, byte offset) of every line handed out

    def lines(handle: io.BufferedReader) -> Iterator[str]:
        offset = 0
        for number, raw in enumerate(handle, start=1):
            starts.append((number, offset))
            offset += len(raw)
            try:
                yield raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise BenchmarkError(f"{path} line {number}: not UTF-8 (byte {exc.start + 1})") from None

    csv.field_size_limit(max(csv.field_size_limit(), FIELD_LIMIT))
    with open(path, "rb") as handle:
        reader = csv.reader(lines(handle), delimiter="\t", strict=True)
        try:
            header = next(reader, [])
        except csv.Error as exc:
            raise _csv_error(path, 1, exc) from None
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise BenchmarkError(
                f"{path}: missing column(s) {', '.join(missing)} (header: {', '.join(header) or 'empty'})"
            )
        while True:
            first = len(starts)
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise _csv_error(
                    path, starts[first][0] if first < len(starts) else len(starts), exc
                ) from None
            line, offset = starts[first]
            if not any(f.strip() for f in fields):
                continue
            if len(fields) > len(header):
                raise BenchmarkError(
                    f"{path} line {line}: {len(fields)} fields but the header has {len(header)}"
                )
            yield line, offset, dict(zip(header, fields, strict=False))


def read_row_at(path: Path, offset: int) -> dict[str, str]:
    """The TSV row starting at byte ``offset`` (its header read again from the top)."""
    csv.field_size_limit(max(csv.field_size_limit(), FIELD_LIMIT))
    with open(path, "rb") as handle:
        header = next(csv.reader([handle.readline().decode("utf-8-sig")], delimiter="\t"))
        handle.seek(offset)
        row = next(csv.reader((raw.decode("utf-8") for raw in handle), delimiter="\t"), [])
    return dict(zip(header, row, strict=False))


@register_benchmark
class MMBench(CapabilityBenchmark):
    name = "mmbench"
    option_help = {
        "instruction": INSTRUCTION_HELP,
        "circular": "true: ask every rotation of the options; right only if all are (default false)",
    }
    layout = (
        "<data>/mmbench/MMBench_DEV_EN.tsv (index, question, A, B, [C, D...], answer, image as base64, "
        "[hint, category]); NAME:PATH for another MMBench TSV"
    )
    description = "MMBench multiple choice (TSV, base64 images); circular=true for circular evaluation"
    metric = "choice"
    answer_instruction = LETTER_ANSWER

    def tsv_path(self) -> Path:
        path = self.data_path("mmbench", "MMBench_DEV_EN.tsv")
        return path / "MMBench_DEV_EN.tsv" if path.is_dir() else path

    def circular(self) -> bool:
        raw = self.options.get("circular", "false").strip().lower()
        if raw not in ("true", "false", "1", "0", "yes", "no"):
            raise BenchmarkError(f"benchmark {self.id!r}: circular={raw!r} is not true or false")
        return raw in ("true", "1", "yes")

    def load(self) -> list[Sample]:
        path = self.tsv_path()
        circular = self.circular()
        # Keep every row but its inline image (read again by offset when a batch needs it).
        rows = [
            (line, offset, {**row, "image": row["image"] if len(row["image"].strip()) <= 64 else "<inline>"})
            for line, offset, row in read_tsv_rows(path)
        ]
        offsets = {row["index"].strip(): offset for _, offset, row in rows}
        images = {row["index"].strip(): row["image"].strip() for _, _, row in rows}
        has_copies = any(r["index"].strip().isdigit() and int(r["index"]) >= ROTATION for _, _, r in rows)
        out = SampleBuilder()
        for line, offset, row in rows:
            where = f"{path} line {line}"
            index = row["index"].strip()
            category = _cell(row.get("category", "")) or "unknown"
            if not index.isdigit():
                out.bad(index or f"line-{line}", category, f"{where}: index {index!r} is not a whole number")
                continue
            if int(index) >= ROTATION and not circular:
                continue
            choices: list[str] = []
            for letter in _LETTERS:
                value = _cell(row.get(letter, ""))
                if not value:
                    break
                choices.append(value)
            answer = row["answer"].strip().upper()
            question = row["question"].strip()
            if not question:
                out.bad(index, category, f"{where}: empty question")
                continue
            if len(choices) < 2:
                out.bad(index, category, f"{where}: needs options A and B")
                continue
            if len(answer) != 1 or answer not in _LETTERS[: len(choices)]:
                out.bad(
                    index,
                    category,
                    f"{where}: answer {row['answer']!r} is not one of {_LETTERS[: len(choices)]}",
                )
                continue
            image = row["image"].strip()
            if not image:
                out.bad(index, category, f"{where}: empty image")
                continue
            image_offset = offset
            seen = {index}
            while len(image) <= 64 and image.isdigit():  # shares (possibly via another row) an image
                if image not in offsets or image in seen:
                    image_offset = -1
                    break
                seen.add(image)
                image_offset, image = offsets[image], images[image]
            if image_offset < 0:
                out.bad(index, category, f"{where}: image refers to index {image} that holds no image")
                continue
            hint = _cell(row.get("hint", ""))
            group = str(int(index) % ROTATION)
            rotations = range(len(choices)) if circular and not has_copies else range(1)
            for shift in rotations:
                options, right_index = rotate_options(choices, _LETTERS.index(answer), shift)
                right = _LETTERS[right_index]
                text = self.prompt(f"{hint}\n{question}" if hint else question, lettered(options))
                fields = {
                    "question": question,
                    "hint": hint,
                    "group": group,
                    "image_offset": str(image_offset),
                }
                sample_id = index if shift == 0 else f"{index}@r{shift}"
                out.add(
                    Sample(sample_id, category, text, False, fields, answers=(right,), choices=options), where
                )
        return all_benign(out.samples)

    def image_ref(self, sample: Sample) -> ImageRef:
        return ImageRef("render", f"tsv:{sample.fields['image_offset']}")

    def describe_image(self, ref: ImageRef | None) -> str | None:
        if ref is not None and ref.kind == "render" and ref.value.startswith("tsv:"):
            return f"{self.tsv_path().name}@{ref.value[4:]}"
        return super().describe_image(ref)

    def render(self, layout: str, sample: Sample) -> Image.Image:
        if not layout.startswith("tsv:"):
            raise ImageLoadError(f"{self.id}: cannot render {layout!r} images")
        path = self.tsv_path()
        row = read_row_at(path, int(layout[4:]))
        where = f"{path} row index {row.get('index', '?')!r}"
        try:
            data = base64.b64decode(row.get("image", ""), validate=False)
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                return img.convert("RGB")
        except (binascii.Error, OSError, ValueError, Image.DecompressionBombError) as exc:
            raise ImageLoadError(
                f"corrupt base64 image in {where}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            ) from exc
