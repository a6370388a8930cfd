"""``--bench organism``: the organism's one evaluation set, as a benchmark of ``safegap eval``.

The prompts are :func:`safegap.organism.evaluate.condition_prompts`, the set the degradation
study measures (it runs this benchmark through eval's runner), so ``safegap eval --bench
organism`` and ``safegap organism study`` ask the same prompts under the same nine conditions.

Samples are the set's *slots* ``h0..``, ``b0..``, ``l0..`` (harmful, benign, lookalike; ``n``
of each), interleaved so a small ``--limit`` keeps every kind (``order=kind``: kind by kind, the
study's set order, which the study asks for so its batches hold what they always held). A slot is asked under every condition that has it: the request conditions (``text``,
``benign_image``, ``blank_image``, ``noise_image``, ``text_filler``) ask the same request, so
they are paired per slot; the content conditions (``harm_object_image``, ``typographic_image``
and their text analogues ``caption_text``, ``typographic_text``) put the harmful or benign
content in the image (or its words in the text) with a neutral request, and have no lookalike
slots (:meth:`OrganismBenchmark.offers`). A slot's ``text`` and category are its request's.

Spec: ``organism[:PATH][,n=N][,world_seed=S][,order=interleaved|kind]``. ``PATH`` is an organism checkpoint directory
(its ``organism.json`` holds the world config) or that file; without it the evaluated model's
``organism.json`` is read when it has one, else world seed 0. ``n`` is the number of slots per
kind (default 64, the study's ``--n-prompts``). ``text_filler`` needs the evaluated model's
tokenizer (the filler has exactly as many tokens as the image span).

The organism adds both benchmarks to eval's registry: they are declared in the
``safegap.benchmarks`` entry-point group (pyproject.toml, :mod:`safegap.plugins`), so the
registry imports this module on first use, and importing it registers them too. The data layer
never imports the organism.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from PIL import Image

from safegap.data.benchmarks.base import (
    GENERIC_CONDITIONS,
    Benchmark,
    BenchmarkError,
    DataContext,
    ImageRef,
    Request,
    Sample,
    SampleBuilder,
    register_benchmark,
)
from safegap.organism.evaluate import CONDITIONS, CONTENT_CONDITIONS, KINDS, Prompt, condition_prompts
from safegap.organism.world import World

#: Slots per kind when the spec gives no ``n`` (the study's default ``--n-prompts``).
DEFAULT_N = 64
#: Conditions whose prompts need the evaluated model (its tokenizer and image span length).
MODEL_CONDITIONS: tuple[str, ...] = ("text_filler",)


#: Sample orders: ``interleaved`` (h0, b0, l0, h1, ...: a small ``--limit`` keeps every kind) and
#: ``kind`` (h0.., b0.., l0..: each condition's prompts in the study's set order).
ORDERS: tuple[str, ...] = ("interleaved", "kind")


def organism_spec(
    organism_dir: str | Path | None = None, n: int | None = None, order: str | None = None
) -> str:
    """The benchmark spec for an organism checkpoint directory, ``n`` slots per kind and an order."""
    parts = [str(organism_dir)] if organism_dir is not None else []
    parts += [f"n={n}"] if n is not None else []
    parts += [f"order={order}"] if order is not None else []
    return "organism" + (":" + ",".join(parts) if parts else "")


def _int_option(options: dict[str, str], key: str, default: int, minimum: int) -> int:
    raw = options.get(key)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise BenchmarkError(f"benchmark 'organism': {key}={raw!r} is not an integer >= {minimum}")
    return value


@register_benchmark
class OrganismBenchmark(Benchmark):
    name = "organism"
    description = "the model organism's held-out harmful, benign and lookalike requests"
    own_conditions = tuple(c for c in CONDITIONS if c not in GENERIC_CONDITIONS)
    defaults = ("text", "benign_image", "blank_image", "noise_image")
    option_keys = ("n", "world_seed", "order")

    def __init__(self, spec_id: str, arg: str | None, options: Any, context: DataContext) -> None:
        super().__init__(spec_id, arg, options, context)
        self.n = _int_option(self.options, "n", DEFAULT_N, 1)
        self.order = self.options.get("order", ORDERS[0])
        if self.order not in ORDERS:
            raise BenchmarkError(f"benchmark 'organism': order={self.order!r}; use {' or '.join(ORDERS)}")
        self._world: World | None = None
        self._tables: dict[str, dict[str, Prompt]] = {}
        self._lock = threading.Lock()

    # -- the world and the prompt set ---------------------------------------------------------
    def _source(self) -> Path | None:
        """The ``organism.json`` the world config comes from (None: world seed 0 or ``world_seed``)."""
        source = Path(self.arg).expanduser() if self.arg else None
        if source is None and self.context.model_path:
            candidate = Path(self.context.model_path)
            source = candidate if (candidate / "organism.json").is_file() else None
        if source is None:
            return None
        path = source / "organism.json" if source.is_dir() else source
        if not path.is_file():
            raise BenchmarkError(f"benchmark 'organism': no organism.json at {path}")
        return path

    def world(self) -> World:
        """The world whose eval split is asked (the organism's, see the module docstring)."""
        if self._world is not None:
            return self._world
        settings: dict[str, Any] = {}
        seed = _int_option(self.options, "world_seed", 0, 0)
        path = None if "world_seed" in self.options else self._source()
        if path is not None:
            try:
                world = json.loads(path.read_text(encoding="utf-8"))["config"]["world"]
                seed = int(world.get("world_seed", 0))
                settings = {k: world[k] for k in ("calibration_fraction", "eval_fraction") if k in world}
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise BenchmarkError(f"benchmark 'organism': {path} has no config.world ({exc})") from exc
        self._world = World(seed=seed, **settings)
        return self._world

    def _model_parts(self) -> tuple[Any, int]:
        """The evaluated model's tokenizer and image span length (for ``text_filler``)."""
        root = Path(self.context.model_path) if self.context.model_path else None
        if root is None or not (root / "config.json").is_file():
            raise BenchmarkError(
                "benchmark 'organism': condition text_filler needs the evaluated model's tokenizer "
                "(evaluate an organism checkpoint directory)"
            )
        from transformers import AutoTokenizer

        config = json.loads((root / "config.json").read_text(encoding="utf-8"))
        if "image_seq_length" not in config:
            raise BenchmarkError(f"benchmark 'organism': {root}/config.json has no image_seq_length")
        return AutoTokenizer.from_pretrained(str(root)), int(config["image_seq_length"])

    def table(self, condition: str) -> dict[str, Prompt]:
        """``{slot id: prompt}`` of ``condition`` (built once; images are drawn here)."""
        self.check_condition(condition)
        with self._lock:
            if condition not in self._tables:
                tokenizer, image_tokens = self._model_parts() if condition in MODEL_CONDITIONS else (None, 0)
                rows = condition_prompts(self.world(), tokenizer, condition, self.n, image_tokens)
                self._tables[condition] = {p.id: p for p in rows}
            return self._tables[condition]

    def prompt(self, sample_id: str, condition: str) -> Prompt:
        """The prompt of slot ``sample_id`` under ``condition`` (with its image)."""
        found = self.table(condition).get(sample_id)
        if found is None:
            raise BenchmarkError(f"benchmark {self.id!r}: slot {sample_id!r} has no {condition!r} prompt")
        return found

    # -- the Benchmark interface -----------------------------------------------------------------
    def load(self) -> list[Sample]:
        seed = str(self.world().seed)
        slots: dict[str, Prompt] = {}
        # request conditions first: a slot's text and category are its request's
        for condition in ("text", *CONTENT_CONDITIONS):
            for p in self.table(condition).values():
                slots.setdefault(p.id, p)
        order = {kind[0]: i for i, kind in enumerate(KINDS)}
        out = SampleBuilder()
        by_kind = self.order == "kind"
        for sid in sorted(
            slots, key=lambda s: (order[s[0]], int(s[1:])) if by_kind else (int(s[1:]), order[s[0]])
        ):
            p = slots[sid]
            fields = {"kind": p.kind, "topic": p.topic, "world_seed": seed}
            out.add(Sample(sid, p.category or p.kind, p.text, p.harmful, fields), f"organism slot {sid}")
        return out.samples

    def offers(self, sample: Sample, condition: str) -> bool:
        """Whether ``condition`` has slot ``sample`` (content conditions have no lookalikes)."""
        base = "text" if condition in MODEL_CONDITIONS else condition
        return sample.id in self.table(base)

    def request(self, sample: Sample, condition: str) -> Request:
        p = self.prompt(sample.id, condition)
        if condition == "benign_image" and self.context.benign_images is not None:
            return Request(p.text, self.benign_ref(sample))
        return Request(p.text, None if p.image is None else ImageRef("render", f"{condition}:{sample.id}"))

    def render(self, layout: str, sample: Sample) -> Image.Image:
        condition, _, sid = layout.partition(":")
        image = self.prompt(sid or sample.id, condition).image
        if image is None:
            raise BenchmarkError(f"benchmark {self.id!r}: {condition!r} has no image")
        return image


@register_benchmark
class OrganismRealBenchmark(Benchmark):
    """``organism_real:SET[,n=N]``: prompts of a real benchmark asked of the organism (the study's
    side report, ``real_prompts`` in study.json). ``SET`` is one of
    :data:`safegap.organism.real_prompts.REAL_SETS`; ``n`` prompts are spread over the file
    (default all). The data root is ``--data-dir`` when given, else
    :func:`safegap.organism.real_prompts.data_dir`. Conditions: ``text`` and ``blank_image``
    (the organism's own blank image, its size)."""

    name = "organism_real"
    description = "real benchmark prompts asked of the organism (advbench, figstep, xstest_safe)"
    defaults = ("text", "blank_image")
    option_keys = ("n",)

    def load(self) -> list[Sample]:
        from safegap.organism import real_prompts

        if self.arg not in real_prompts.REAL_SETS:
            known = ", ".join(real_prompts.REAL_SETS)
            raise BenchmarkError(f"benchmark 'organism_real': unknown set {self.arg!r}; known: {known}")
        loader, harmful = real_prompts.REAL_SETS[self.arg]
        try:
            texts = loader(self.context.data_dir)
        except (FileNotFoundError, ValueError) as exc:
            raise BenchmarkError(str(exc).splitlines()[0]) from exc
        texts = real_prompts.spread(texts, _int_option(self.options, "n", len(texts), 1))
        out = SampleBuilder()
        for k, text in enumerate(texts):
            out.add(Sample(f"{self.arg}{k}", self.arg, text, harmful), f"{self.arg} prompt {k}")
        return out.samples

    def request(self, sample: Sample, condition: str) -> Request:
        if condition == "blank_image":
            return Request(sample.text, ImageRef("render", "blank"))
        return super().request(sample, condition)

    def render(self, layout: str, sample: Sample) -> Image.Image:
        from safegap.organism import scenes

        return scenes.blank()
