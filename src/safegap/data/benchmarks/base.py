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
be read at all is a :class:`BenchmarkError`. Reading files and images is in
:mod:`safegap.data.benchmarks.files` (re-exported here).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import os
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from PIL import Image, ImageDraw

from safegap.data.benchmarks.files import (  # noqa: F401  (re-exported: loaders import them from base)
    IMAGE_SUFFIXES,
    BenchmarkError,
    ImageLoadError,
    find_image,
    list_images,
    open_image,
    read_csv,
    read_header,
    read_json,
    read_jsonl,
)
from safegap.data.images import blank_image, noise_image
from safegap.plugins import BENCHMARKS_GROUP, Registry

GENERIC_CONDITIONS: tuple[str, ...] = ("text", "blank_image", "noise_image", "benign_image")
DATA_ENV = "SAFEGAP_DATA"
BENIGN_ENV = "SAFEGAP_BENIGN_IMAGES"


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


def stable_seed(*parts: str) -> int:
    """A 31-bit seed from strings, identical across processes and runs (unlike ``hash``)."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


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
    #: Set from :attr:`option_help` when a class declares that.
    option_keys: ClassVar[tuple[str, ...]] = ()
    #: Each option key and what it sets (``safegap benchmarks`` and docs/evaluation.md list them).
    option_help: ClassVar[Mapping[str, str]] = {}
    #: Where the files go under the data root, and what ``NAME:PATH`` may point at.
    layout: ClassVar[str] = ""
    #: A registered benchmark easily taken for this one (named in this one's errors).
    counterpart: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "option_help" in cls.__dict__ and "option_keys" not in cls.__dict__:
            cls.option_keys = tuple(cls.option_help)

    @classmethod
    def info(cls) -> dict[str, Any]:
        """What ``safegap benchmarks`` shows: name, description, file layout, conditions (the
        defaults first) and options with their help."""
        own = tuple(dict.fromkeys((*cls.own_conditions, *GENERIC_CONDITIONS)))
        return {
            "name": cls.name,
            "description": cls.description,
            "layout": cls.layout,
            "default_conditions": list(cls.defaults),
            "conditions": list(own),
            "options": {key: cls.option_help.get(key, "") for key in cls.option_keys},
        }

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

    def offers(self, sample: Sample, condition: str) -> bool:
        """Whether ``sample`` is asked under ``condition`` (every sample, unless a benchmark's
        conditions have different sample sets; the runner plans only offered pairs)."""
        return True

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

    def check_folder_option(self, key: str = "images") -> None:
        """A folder the spec names explicitly (``images=DIR``) must exist: without this, a
        benchmark that can draw its images would silently draw them instead."""
        if key in self.options and not Path(self.options[key]).expanduser().is_dir():
            raise BenchmarkError(f"benchmark {self.id!r}: {key}={self.options[key]} is not a folder")

    def check_images(self, samples: Sequence[Sample], condition: str) -> None:
        """Fail up front (one line) when ``condition`` takes image files and not one of them
        exists for ``samples``: a wrong images folder or data root, not a run of errored samples."""
        paths: list[Path] = []
        for sample in samples:
            if sample.error:
                continue
            try:
                ref = self.request(sample, condition).image
            except (BenchmarkError, KeyError, ValueError, OSError):
                continue
            if ref is None or ref.kind != "file":
                continue
            path = Path(ref.value)
            if path.is_file():
                return
            paths.append(path)
        if not paths:
            return
        folder = paths[0].parent
        where = f"folder {folder} does not exist" if not folder.is_dir() else f"first: {paths[0]}"
        hint = f"; check images= or --data-dir{self.counterpart_hint()}"
        raise BenchmarkError(
            f"benchmark {self.id!r}, condition {condition!r}: none of its {len(paths)} image(s) exist "
            f"({where}){hint}"
        )

    def counterpart_hint(self, condition: str | None = None) -> str:
        """``" (NAME is ...)"`` naming the easily confused benchmark, if there is one (and it
        offers ``condition``, when given)."""
        other = BENCHMARKS.get(self.counterpart) if self.counterpart else None
        if other is None or (condition is not None and condition not in other.own_conditions):
            return ""
        return f" ({other.name} is {other.description})"

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


def unknown_benchmark(name: str) -> BenchmarkError:
    """The one-line error for an unknown benchmark name: the close names (with what each is, so
    ``harmbench`` and ``harmbench_mm`` are told apart), then every known name."""
    close = difflib.get_close_matches(name, list(BENCHMARKS), n=3, cutoff=0.6)
    close += [n for n in BENCHMARKS if name.startswith(n) and n not in close]
    hint = ""
    if close:
        hint = "; did you mean " + " or ".join(f"{n} ({BENCHMARKS[n].description})" for n in close) + "?"
    return BenchmarkError(f"unknown benchmark {name!r}{hint}; known: {BENCHMARKS.known()}")


def register_benchmark(cls: type[Benchmark]) -> type[Benchmark]:
    """Class decorator: make ``cls`` available as ``--bench <cls.name>``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    return BENCHMARKS.register(cls.name, cls)
