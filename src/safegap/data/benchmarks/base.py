"""What every benchmark shares: samples, conditions, image references and the registry.

A benchmark turns its files into :class:`Sample` rows (one per request) and, for each
*condition*, into a :class:`Request`: the text the model sees and a reference to the image (or
none). Conditions are the benchmark's own (``figstep``, ``sd_typo``, ``image`` ...) plus four
generic ones every benchmark offers (the CMRM setting): ``text`` (the request in words, no
image), ``blank_image``, ``noise_image`` and ``benign_image`` (the same words with a
meaningless or an unrelated harmless image).

Images are referenced, not loaded, until a batch needs them, so a run of thousands of samples
holds only one batch of pixels, and a results file can say exactly which image was used.
Malformed rows become samples with ``error`` set (reported, never dropped); a file that cannot
be read at all is a :class:`BenchmarkError`.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from PIL import Image, ImageDraw

from safegap.data.images import blank_image, noise_image
from safegap.errors import UserError, decode_utf8
from safegap.plugins import BENCHMARKS_GROUP, Registry

GENERIC_CONDITIONS: tuple[str, ...] = ("text", "blank_image", "noise_image", "benign_image")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
DATA_ENV = "SAFEGAP_DATA"
BENIGN_ENV = "SAFEGAP_BENIGN_IMAGES"


class BenchmarkError(ValueError):
    """A benchmark cannot be loaded at all (unknown name, missing file or column)."""


class ImageLoadError(ValueError):
    """One sample's image is missing or unreadable (an errored sample, not a fatal error)."""


@dataclass(frozen=True)
class ImageRef:
    """Where an image comes from: ``file`` (a path), or generated: ``blank``, ``noise`` (value =
    seed), ``benign`` (value = seed of a synthetic harmless scene) or ``render`` (the benchmark
    draws it from the sample, value = layout name)."""

    kind: str
    value: str = ""

    def describe(self, root: Path | None = None) -> str:
        """The reference as stored in results: a path (relative to ``root`` when inside it) or
        ``generated:KIND[:VALUE]``."""
        if self.kind == "file":
            path = Path(self.value)
            if root is not None:
                try:
                    return str(path.resolve().relative_to(root.resolve()))
                except ValueError:
                    pass
            return str(path)
        return f"generated:{self.kind}" + (f":{self.value}" if self.value else "")


@dataclass(frozen=True)
class Sample:
    """One request of a benchmark.

    ``text`` is the request in words (the ``text`` condition and what judges see as the
    objective); ``harmful`` says whether a safe model should refuse it (``False`` for XSTest's
    safe prompts or the organism's benign requests); ``fields`` keeps benchmark-specific columns;
    ``error`` marks a malformed row (file and line named). Capability benchmarks also set
    ``answers`` (the reference answer(s): an option letter, ``yes``/``no``, or every annotator's
    answer) and, for multiple choice, ``choices`` (the options in order, lettered A, B, ...).
    """

    id: str
    category: str
    text: str
    harmful: bool = True
    fields: Mapping[str, str] = field(default_factory=dict)
    error: str | None = None
    answers: tuple[str, ...] | None = None
    choices: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Request:
    """What the model gets for one sample under one condition."""

    prompt: str
    image: ImageRef | None


@dataclass(frozen=True)
class DataContext:
    """Where data lives: the data root, an optional folder of harmless natural images for the
    ``benign_image`` condition (otherwise a synthetic scene is drawn) and the evaluated model."""

    data_dir: Path | None = None
    benign_images: Path | None = None
    #: The evaluated model (the organism benchmark reads its world config from it).
    model_path: str | None = None

    def require_data_dir(self, benchmark: str) -> Path:
        if self.data_dir is None:
            raise BenchmarkError(
                f"benchmark {benchmark!r} needs a data directory: pass --data-dir or set {DATA_ENV}"
            )
        return self.data_dir


def resolve_data_dir(explicit: str | Path | None = None) -> Path | None:
    """``explicit`` if given, else ``$SAFEGAP_DATA``, else ``None`` (benchmarks that need files
    then fail with a message saying so)."""
    raw = str(explicit) if explicit is not None else os.environ.get(DATA_ENV)
    if not raw:
        return None
    path = Path(raw).expanduser()
    if not path.is_dir():
        source = "--data-dir" if explicit is not None else DATA_ENV
        raise BenchmarkError(f"data directory {path} (from {source}) does not exist")
    return path


def resolve_benign_images(explicit: str | Path | None = None) -> Path | None:
    raw = str(explicit) if explicit is not None else os.environ.get(BENIGN_ENV)
    if not raw:
        return None
    path = Path(raw).expanduser()
    if not path.is_dir() or not list_images(path):
        raise BenchmarkError(f"benign image folder {path} does not exist or holds no images")
    return path


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def stable_seed(*parts: str) -> int:
    """A 31-bit seed from strings, identical across processes and runs (unlike ``hash``)."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


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


def benign_scene(seed: int, size: tuple[int, int] = (336, 336)) -> Image.Image:
    """A harmless synthetic landscape (sky, sun, hills, a tree), varied by ``seed``: the
    "unrelated benign image" when no folder of natural images is configured."""
    rng = random.Random(seed)
    w, h = size
    img = Image.new("RGB", size, (rng.randint(90, 150), rng.randint(160, 210), 235))
    draw = ImageDraw.Draw(img)
    r = rng.randint(w // 14, w // 8)
    cx, cy = rng.randint(r, w - r), rng.randint(r, h // 3)
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(255, rng.randint(200, 235), 60))
    for k in range(3):
        base = h // 2 + k * h // 8
        green = (40 + 30 * k, rng.randint(120, 180), 50 + 10 * k)
        x0 = rng.randint(-w // 2, 0)
        draw.ellipse((x0, base, x0 + rng.randint(w, 2 * w), base + h), fill=green)
    tx = rng.randint(w // 5, 4 * w // 5)
    ty = rng.randint(h // 2, 3 * h // 4)
    draw.rectangle((tx - 6, ty, tx + 6, ty + h // 6), fill=(110, 70, 30))
    draw.ellipse((tx - 30, ty - 45, tx + 30, ty + 10), fill=(30, 110, 40))
    return img


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


class SampleBuilder:
    """Collects samples, turning duplicate ids into errored samples so keys stay unique."""

    def __init__(self) -> None:
        self.samples: list[Sample] = []
        self._ids: set[str] = set()

    def add(self, sample: Sample, where: str) -> None:
        if sample.category == "all":  # "all" is every summary cell's overall row
            sample = dataclasses.replace(sample, category="category:all")
        if sample.id in self._ids:
            sample = Sample(
                id=f"{sample.id}@{where}",
                category=sample.category,
                text=sample.text,
                harmful=sample.harmful,
                fields=sample.fields,
                error=f"{where}: duplicate sample id {sample.id!r}",
            )
        self._ids.add(sample.id)
        self.samples.append(sample)

    def bad(self, sample_id: str, category: str, reason: str) -> None:
        self.add(Sample(id=sample_id, category=category or "unknown", text="", error=reason), reason)


class Benchmark(ABC):
    """Base class: subclasses set ``name``, ``own_conditions`` and implement :meth:`load`,
    :meth:`own_request` and (if they draw images) :meth:`render`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    own_conditions: ClassVar[tuple[str, ...]] = ()
    #: Conditions used when ``--condition`` is not given.
    defaults: ClassVar[tuple[str, ...]] = GENERIC_CONDITIONS
    #: The ``key=value`` options the spec may give (any other key is an error naming these).
    option_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self, spec_id: str, arg: str | None, options: Mapping[str, str], context: DataContext
    ) -> None:
        self.id = spec_id
        self.arg = arg
        self.options = dict(options)
        self.context = context
        self._samples: list[Sample] | None = None
        self._benign_files: list[Path] | None = None

    # -- data ---------------------------------------------------------------------------
    @abstractmethod
    def load(self) -> list[Sample]:
        """Read and validate the files; malformed rows come back as errored samples."""

    def samples(self) -> list[Sample]:
        if self._samples is None:
            self._samples = self.load()
        return self._samples

    def data_path(self, *default: str) -> Path:
        """``arg`` when the spec gives a path, else ``data_dir/<default...>``."""
        if self.arg:
            return Path(self.arg).expanduser()
        return self.context.require_data_dir(self.id).joinpath(*default)

    @property
    def root(self) -> Path | None:
        """Folder that image references in results are written relative to."""
        return self.context.data_dir

    # -- conditions ---------------------------------------------------------------------
    def conditions(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*self.own_conditions, *GENERIC_CONDITIONS)))

    def default_conditions(self) -> tuple[str, ...]:
        return self.defaults

    def check_condition(self, condition: str) -> None:
        """Raise a one-line error if ``condition`` is not offered (or its data is absent)."""
        if condition not in self.conditions():
            raise BenchmarkError(
                f"benchmark {self.id!r} has no condition {condition!r}; it offers: {', '.join(self.conditions())}"
            )

    def request(self, sample: Sample, condition: str) -> Request:
        if condition == "text":
            return Request(sample.text, None)
        if condition == "blank_image":
            return Request(sample.text, ImageRef("blank"))
        if condition == "noise_image":
            return Request(sample.text, ImageRef("noise", str(stable_seed(self.id, sample.id, "noise"))))
        if condition == "benign_image":
            return Request(sample.text, self.benign_ref(sample))
        return self.own_request(sample, condition)

    def own_request(self, sample: Sample, condition: str) -> Request:
        raise BenchmarkError(f"benchmark {self.id!r} has no condition {condition!r}")

    def benign_ref(self, sample: Sample) -> ImageRef:
        folder = self.context.benign_images
        if folder is not None:
            if self._benign_files is None:
                self._benign_files = list_images(folder)
            files = self._benign_files
            return ImageRef("file", str(files[stable_seed(self.id, sample.id, "benign") % len(files)]))
        return ImageRef("benign", str(stable_seed(self.id, sample.id, "benign")))

    # -- images ---------------------------------------------------------------------------
    def load_image(self, ref: ImageRef, sample: Sample) -> Image.Image:
        """Pixels for ``ref``; :class:`ImageLoadError` (naming the image) when unavailable."""
        if ref.kind == "file":
            return open_image(Path(ref.value))
        if ref.kind == "blank":
            return blank_image()
        if ref.kind == "noise":
            return noise_image(seed=int(ref.value))
        if ref.kind == "benign":
            return benign_scene(int(ref.value))
        if ref.kind == "render":
            return self.render(ref.value, sample)
        raise ImageLoadError(f"unknown image reference kind {ref.kind!r}")

    def render(self, layout: str, sample: Sample) -> Image.Image:
        raise ImageLoadError(f"benchmark {self.id!r} cannot render images ({layout!r})")

    def describe_image(self, ref: ImageRef | None) -> str | None:
        return None if ref is None else ref.describe(self.root)


BenchmarkFactory = Callable[[str, str | None, Mapping[str, str], DataContext], Benchmark]


def _benchmark_class(name: str, obj: object) -> type[Benchmark]:
    if not (isinstance(obj, type) and issubclass(obj, Benchmark)):
        raise BenchmarkError(f"benchmark {name!r}: its plug-in is {obj!r}, not a Benchmark subclass")
    return obj


#: Benchmarks by name. In-tree ones register on import of this package; plug-ins (the organism's)
#: register when imported or declare themselves in the ``safegap.benchmarks`` entry-point group
#: (:mod:`safegap.plugins`), imported the first time their name is looked up.
BENCHMARKS: Registry[type[Benchmark]] = Registry("benchmark", BENCHMARKS_GROUP, _benchmark_class)


def register_benchmark(cls: type[Benchmark]) -> type[Benchmark]:
    """Class decorator: make ``cls`` available as ``--bench <cls.name>``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    return BENCHMARKS.register(cls.name, cls)
