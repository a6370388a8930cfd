"""HarmBench behaviours: the multimodal set (CSV + images) and the text set.

Files (``<data>/harmbench/``): ``harmbench_behaviors_multimodal_all.csv`` with ``Behavior,
BehaviorID, ImageFileName`` (+ ``SemanticCategory``, ``ContextString``) and images in
``multimodal_behavior_images/``; ``harmbench_behaviors_text_all.csv`` with ``Behavior,
BehaviorID`` (+ ``SemanticCategory``, ``ContextString``). Contextual behaviours put the context
before the behaviour, as HarmBench does. Not bundled here.

``harmbench_mm`` conditions: ``image`` (behaviour + its image) and the generic ones;
``harmbench`` (text) offers the generic ones (text, blank/noise/benign image). The two are easily
confused: each one's errors name the other (a CSV with an ``ImageFileName`` column given to
``harmbench`` is the multimodal set). An ``ImageFileName`` ending ``.jpg``/``.jpeg`` whose file
is saved as ``.png`` (as in HarmBench's release) resolves to the file that exists.
"""

from __future__ import annotations

from pathlib import Path

from safegap.data.benchmarks.base import (
    Benchmark,
    BenchmarkError,
    ImageRef,
    Request,
    Sample,
    SampleBuilder,
    find_image,
    read_csv,
    read_header,
    register_benchmark,
)


def behaviour_text(row: dict[str, str]) -> str:
    context = row.get("ContextString", "").strip()
    return f"{context}\n\n{row['Behavior'].strip()}" if context else row["Behavior"].strip()


@register_benchmark
class HarmBenchText(Benchmark):
    name = "harmbench"
    description = "HarmBench text behaviours (a text-harm set: text, blank/noise/benign image)"
    layout = (
        "<data>/harmbench/harmbench_behaviors_text_all.csv (Behavior, BehaviorID; SemanticCategory, "
        "ContextString optional). No images: for the multimodal set use harmbench_mm. "
        "NAME:PATH overrides the CSV."
    )
    csv_name = "harmbench_behaviors_text_all.csv"
    columns: tuple[str, ...] = ("Behavior", "BehaviorID")
    counterpart = "harmbench_mm"

    def csv_path(self) -> Path:
        path = self.data_path("harmbench", self.csv_name)
        return path / self.csv_name if path.is_dir() else path

    def check_header(self, path: Path) -> None:
        """The text set given the multimodal CSV (or the reverse) is named as such."""
        header = read_header(path)
        if "ImageFileName" in header and "image" not in self.own_conditions:
            raise BenchmarkError(
                f"{path} has an ImageFileName column: it is HarmBench's multimodal set; use "
                f"--bench harmbench_mm (benchmark {self.name!r} is the text set)"
            )
        if "ImageFileName" not in header and "image" in self.own_conditions and "Behavior" in header:
            raise BenchmarkError(
                f"{path} has no ImageFileName column: it looks like HarmBench's text set; use "
                f"--bench harmbench (benchmark {self.name!r} is the multimodal set)"
            )

    def load(self) -> list[Sample]:
        path = self.csv_path()
        self.check_header(path)
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
    description = "HarmBench multimodal behaviours (behaviour + image)"
    layout = (
        "<data>/harmbench/harmbench_behaviors_multimodal_all.csv (Behavior, BehaviorID, ImageFileName) "
        "and images in <data>/harmbench/multimodal_behavior_images/ (a .jpg/.jpeg name saved as .png "
        "is found). NAME:PATH overrides the CSV."
    )
    option_help = {
        "images": "folder of the behaviour images (default: multimodal_behavior_images next to the CSV)"
    }
    own_conditions = ("image",)
    defaults = ("image",)
    csv_name = "harmbench_behaviors_multimodal_all.csv"
    columns = ("Behavior", "BehaviorID", "ImageFileName")
    counterpart = "harmbench"

    def images_dir(self) -> Path:
        if "images" in self.options:
            return Path(self.options["images"]).expanduser()
        return self.csv_path().parent / "multimodal_behavior_images"

    def own_request(self, sample: Sample, condition: str) -> Request:
        path = find_image(self.images_dir() / sample.fields["ImageFileName"])
        return Request(sample.text, ImageRef("file", str(path)))
