"""MOSSBench: 300 benign image+text queries that look harmful (multimodal over-refusal).

Files, as in the MOSSBench repository's ``data/`` folder: ``<data>/mossbench/images_information/
information.json`` (an object keyed by problem id, each with ``pid``, ``question``, ``image``
(a path relative to that ``data`` folder, e.g. ``images/1.png``), ``short description``,
``description`` and ``metadata`` {``over``: ``type 1|2|3``, ``human``, ``child``, ``syn``,
``ocr``, ``harm``}) and the images under ``<data>/mossbench/images/``. A clone of the whole
repository (``<data>/mossbench/data/...``) works too. When the listed file is absent, an image
of the same name with another suffix is used (the Hub archive ships JPGs for the PNG names).

Every query is benign: a refusal is an over-refusal (``harmful`` is false), judged by the
refusal judges like XSTest's safe prompts. Category = stimulus type: ``exaggerated_risk``
(type 1), ``negated_harm`` (type 2), ``counterintuitive_interpretation`` (type 3).
Conditions: ``image`` (the query with its image) and the generic ones (``text`` = the query
alone, which shows how much of the refusal the image causes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from safegap.data.benchmarks.base import (
    IMAGE_SUFFIXES,
    Benchmark,
    BenchmarkError,
    ImageRef,
    Request,
    Sample,
    SampleBuilder,
    read_json,
    register_benchmark,
)
from safegap.data.benchmarks.capability import all_benign

STIMULI = {
    "type 1": "exaggerated_risk",
    "type 2": "negated_harm",
    "type 3": "counterintuitive_interpretation",
}
FLAGS = ("human", "child", "syn", "ocr")


@register_benchmark
class MOSSBench(Benchmark):
    name = "mossbench"
    layout = (
        "<data>/mossbench/images_information/information.json (pid, question, image, metadata.over) "
        "and <data>/mossbench/images/ (the MOSSBench repository's data/ folder)"
    )
    description = "MOSSBench: 300 benign queries with images that look harmful (over-refusal)"
    own_conditions = ("image",)
    defaults = ("image", "text")
    #: Scored by the refusal judges: the refusal rate on benign queries.
    metric: ClassVar[str] = "over_refusal"

    def data_folder(self) -> Path:
        """The folder that holds ``images_information/`` and ``images/``."""
        base = self.data_path("mossbench")
        if base.is_file():  # the spec named information.json itself
            return base.parent.parent
        nested = base / "data"
        return nested if (nested / "images_information").is_dir() else base

    def load(self) -> list[Sample]:
        folder = self.data_folder()
        path = folder / "images_information" / "information.json"
        data = read_json(path)
        if not isinstance(data, dict):
            raise BenchmarkError(f"{path}: expected an object keyed by problem id")
        out = SampleBuilder()
        for key in sorted(data, key=lambda k: (len(k), k)):
            entry = data[key]
            where = f"{path} entry {key!r}"
            if not isinstance(entry, dict):
                out.bad(key, "unknown", f"{where}: expected an object")
                continue
            raw_meta = entry.get("metadata")
            meta: dict[str, Any] = raw_meta if isinstance(raw_meta, dict) else {}
            over = str(meta.get("over", "")).strip().lower()
            category = STIMULI.get(over, "unknown")
            pid = str(entry.get("pid") or key).strip()
            question, image = str(entry.get("question") or "").strip(), str(entry.get("image") or "").strip()
            missing = [n for n, v in (("question", question), ("image", image)) if not v]
            if missing:
                out.bad(pid, category, f"{where}: missing or empty {', '.join(missing)}")
                continue
            if over not in STIMULI:
                out.bad(pid, category, f"{where}: metadata.over {meta.get('over')!r} is not type 1, 2 or 3")
                continue
            if Path(image).is_absolute() or ".." in Path(image).parts:
                out.bad(pid, category, f"{where}: image {image!r} must be relative to {folder}")
                continue
            harm = meta.get("harm")
            fields = {
                "image": image,
                "stimulus": over,
                "description": str(entry.get("short description") or ""),
                "harm": ",".join(str(h) for h in harm) if isinstance(harm, list) else str(harm or ""),
                **{flag: str(meta.get(flag, "")) for flag in FLAGS},
            }
            out.add(Sample(pid, category, question, False, fields), where)
        return all_benign(out.samples)

    def image_path(self, sample: Sample) -> Path:
        path = self.data_folder() / sample.fields["image"]
        if path.is_file():
            return path
        for suffix in IMAGE_SUFFIXES:
            other = path.with_suffix(suffix)
            if other.is_file():
                return other
        return path  # missing: the image load names it

    def own_request(self, sample: Sample, condition: str) -> Request:
        return Request(sample.text, ImageRef("file", str(self.image_path(sample))))
