"""HarmBench behaviours: the multimodal set (CSV + images) and the text set.

Files (``<data>/harmbench/``): ``harmbench_behaviors_multimodal_all.csv`` with ``Behavior,
BehaviorID, ImageFileName`` (+ ``SemanticCategory``, ``ContextString``) and images in
``multimodal_behavior_images/``; ``harmbench_behaviors_text_all.csv`` with ``Behavior,
BehaviorID`` (+ ``SemanticCategory``, ``ContextString``). Contextual behaviours put the context
before the behaviour, as HarmBench does. Not bundled here.

``harmbench_mm`` conditions: ``image`` (behaviour + its image) and the generic ones;
``harmbench`` (text) offers the generic ones (text, blank/noise/benign image).
"""

from __future__ import annotations

from pathlib import Path

from safegap.data.benchmarks.base import (
    Benchmark,
    ImageRef,
    Request,
    Sample,
    SampleBuilder,
    read_csv,
    register_benchmark,
)


def behaviour_text(row: dict[str, str]) -> str:
    context = row.get("ContextString", "").strip()
    return f"{context}\n\n{row['Behavior'].strip()}" if context else row["Behavior"].strip()


@register_benchmark
class HarmBenchText(Benchmark):
    name = "harmbench"
    description = "HarmBench text behaviours (a text-harm set: text, blank/noise/benign image)"
    csv_name = "harmbench_behaviors_text_all.csv"
    columns: tuple[str, ...] = ("Behavior", "BehaviorID")

    def csv_path(self) -> Path:
        path = self.data_path("harmbench", self.csv_name)
        return path / self.csv_name if path.is_dir() else path

    def load(self) -> list[Sample]:
        path = self.csv_path()
        out = SampleBuilder()
        for line, row in read_csv(path, self.columns):
            where = f"{path} line {line}"
            sample_id = row["BehaviorID"].strip() or f"line-{line}"
            category = row.get("SemanticCategory", "").strip() or "unknown"
            empty = [c for c in self.columns if not row[c].strip()]
            if empty:
                out.bad(sample_id, category, f"{where}: empty {', '.join(empty)}")
                continue
            fields: dict[str, str] = {k: row[k] for k in ("ImageFileName", "FunctionalCategory") if k in row}
            out.add(Sample(sample_id, category, behaviour_text(row), True, fields), where)
        return out.samples


@register_benchmark
class HarmBenchMultimodal(HarmBenchText):
    name = "harmbench_mm"
    option_keys = ("images",)
    description = "HarmBench multimodal behaviours (behaviour + image)"
    own_conditions = ("image",)
    defaults = ("image",)
    csv_name = "harmbench_behaviors_multimodal_all.csv"
    columns = ("Behavior", "BehaviorID", "ImageFileName")

    def images_dir(self) -> Path:
        if "images" in self.options:
            return Path(self.options["images"]).expanduser()
        return self.csv_path().parent / "multimodal_behavior_images"

    def own_request(self, sample: Sample, condition: str) -> Request:
        return Request(sample.text, ImageRef("file", str(self.images_dir() / sample.fields["ImageFileName"])))
