"""Input records for the diagnostics and the data SPEC of ``safegap gap`` / ``safegap layers``.

A SPEC is either a file (``.jsonl``, ``.json`` list, or ``.csv`` with a header) of records::

    {"prompt": "...", "image": "img/001.png", "caption": "a red car", "label": "harmful", "id": "x1"}

(``prompt`` required, aliases ``text``/``question``/``query``/``goal``; ``image`` a path relative to
the file, alias ``image_path``; ``caption``, ``label`` and ``id`` optional), or the name of a
registered data source, optionally with an argument: ``NAME`` or ``NAME:ARG``.

Extension point: a provider either calls :func:`register_data_source`, or declares its loader
``gap_records(arg: str) -> Iterable[GapRecord | Mapping]`` as an entry point in the group
``safegap.gap_sources`` (:mod:`safegap.plugins`), imported on first use; the organism declares
``organism`` that way, so ``--data organism`` works without this module naming it (records may
carry in-memory PIL images).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from safegap.plugins import GAP_SOURCES_GROUP, Registry

PROMPT_KEYS = ("prompt", "text", "question", "query", "goal")
IMAGE_KEYS = ("image", "image_path")
HARMFUL_LABELS = {"harmful", "unsafe", "1", "true", "yes"}
BENIGN_LABELS = {"benign", "safe", "harmless", "0", "false", "no"}


@dataclass(frozen=True)
class GapRecord:
    """One prompt with an optional image (path or PIL image), caption and harmful/benign label."""

    prompt: str
    image: str | Path | Image.Image | None = None
    caption: str | None = None
    label: str | None = None
    id: str | None = None

    def load_image(self) -> Image.Image | None:
        """The image as RGB, or None; a clear error names the missing file."""
        if self.image is None or isinstance(self.image, Image.Image):
            return self.image.convert("RGB") if isinstance(self.image, Image.Image) else None
        path = Path(self.image)
        if not path.is_file():
            raise FileNotFoundError(
                f"record {self.id or self.prompt[:40]!r}: image file {str(path)!r} not found"
            )
        try:
            with Image.open(path) as handle:
                return handle.convert("RGB")
        except OSError as exc:
            raise ValueError(
                f"record {self.id or self.prompt[:40]!r}: cannot read image {str(path)!r} ({exc})"
            ) from exc

    @property
    def is_harmful(self) -> bool:
        """Rows without a label count as harmful (harmful-request files often have no label column)."""
        if self.label is None or self.label == "":
            return True
        label = self.label.strip().lower()
        if label in HARMFUL_LABELS:
            return True
        if label in BENIGN_LABELS:
            return False
        raise ValueError(
            f"record {self.id or self.prompt[:40]!r}: label {self.label!r} is neither harmful nor benign"
        )


RecordLoader = Callable[[str], Iterable["GapRecord | Mapping[str, Any]"]]
#: Gap data sources by name; plug-ins register or declare themselves (:mod:`safegap.plugins`).
DATA_SOURCES: Registry[RecordLoader] = Registry("gap data source", GAP_SOURCES_GROUP)


def register_data_source(name: str, loader: RecordLoader) -> None:
    """Make ``--data NAME[:ARG]`` call ``loader(ARG)`` (``ARG`` is ``""`` when absent)."""
    DATA_SOURCES.register(name, loader)


def record_from_mapping(row: Mapping[str, Any], where: str, base_dir: Path | None = None) -> GapRecord:
    """Build a record from a dict (file row or provider output), with aliases and validation."""
    prompt = next((row[k] for k in PROMPT_KEYS if row.get(k) not in (None, "")), None)
    if not isinstance(prompt, str):
        raise ValueError(f"{where}: needs a text field 'prompt' (or {', '.join(PROMPT_KEYS[1:])})")
    image: Any = next((row[k] for k in IMAGE_KEYS if row.get(k) not in (None, "")), None)
    if isinstance(image, str | Path):
        path = Path(image)
        image = path if path.is_absolute() or base_dir is None else base_dir / path
    elif image is not None and not isinstance(image, Image.Image):
        raise ValueError(f"{where}: 'image' must be a path, got {type(image).__name__}")

    def text(key: str) -> str | None:
        value = row.get(key)
        return None if value in (None, "") else str(value)

    return GapRecord(
        prompt=prompt, image=image, caption=text("caption"), label=text("label"), id=text("id") or where
    )


def load_record_file(path: str | Path) -> list[GapRecord]:
    """Records from a ``.jsonl``, ``.json`` (list) or ``.csv`` file; image paths are relative to it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {str(path)!r} not found")
    suffix = path.suffix.lower()
    rows: list[tuple[str, Any]] = []
    if suffix == ".jsonl":
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if line.strip():
                    try:
                        rows.append((f"{path.name} line {number}", json.loads(line)))
                    except json.JSONDecodeError as exc:
                        raise ValueError(f"{path.name} line {number}: not valid JSON ({exc.msg})") from exc
    elif suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path.name}: not valid JSON ({exc.msg})") from exc
        if not isinstance(data, list):
            raise ValueError(f"{path.name}: expected a JSON list of records")
        rows = [(f"{path.name} item {i}", item) for i, item in enumerate(data)]
    elif suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as handle:
            rows = [(f"{path.name} row {i}", item) for i, item in enumerate(csv.DictReader(handle), 2)]
    else:
        raise ValueError(
            f"data file {str(path)!r}: unsupported extension {suffix!r} (use .jsonl, .json or .csv)"
        )
    records = []
    for where, row in rows:
        if not isinstance(row, Mapping):
            raise ValueError(f"{where}: expected an object, got {type(row).__name__}")
        records.append(record_from_mapping(row, where, path.parent))
    if not records:
        raise ValueError(f"data file {str(path)!r} has no records")
    return records


def resolve_data(spec: str) -> list[GapRecord]:
    """Records for a data SPEC: a file path, or ``NAME[:ARG]`` of a data source."""
    if Path(spec).is_file():
        return load_record_file(spec)
    # NAME[:ARG] in the grammar of safegap.specs; the source parses its ARG (and options) itself
    name, _, arg = spec.partition(":")
    if name.strip() not in DATA_SOURCES:
        if Path(spec).suffix.lower() in (".jsonl", ".json", ".csv"):
            raise FileNotFoundError(f"data file {spec!r} not found")
        raise ValueError(
            f"data spec {spec!r}: no such file and no data source {name!r} (sources: {DATA_SOURCES.known()})"
        )
    loader = DATA_SOURCES[name.strip()]
    records = []
    for i, item in enumerate(loader(arg)):
        records.append(item if isinstance(item, GapRecord) else record_from_mapping(item, f"{name} item {i}"))
    if not records:
        raise ValueError(f"data source {name!r} returned no records")
    return records
