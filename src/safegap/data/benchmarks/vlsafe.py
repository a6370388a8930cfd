"""VLSafe (the DRESS harmlessness examine split): harmful questions grounded in COCO images.

Files: ``<data>/vlsafe/harmlessness_examine.jsonl`` (one object per line with ``image_id`` = a
COCO train2017 file name, ``query`` and optional ``caption``) and COCO train2017 under
``<data>/vlsafe/coco/train2017/`` or ``<data>/coco/train2017/`` (or ``coco=DIR`` in the spec).
Neither file ships here (Hub only, no licence stated); the loader reads them where a user
brought them in.

Conditions: ``image`` (the COCO image + the query) and the generic ones (``text`` = query only).
"""

from __future__ import annotations

from pathlib import Path

from safegap.data.benchmarks.base import (
    Benchmark,
    ImageRef,
    Request,
    Sample,
    SampleBuilder,
    read_jsonl,
    register_benchmark,
)


@register_benchmark
class VLSafe(Benchmark):
    name = "vlsafe"
    option_keys = ("coco",)
    description = "VLSafe harmlessness_examine: harmful queries grounded in COCO images"
    own_conditions = ("image",)
    defaults = ("image", "text")

    def jsonl_path(self) -> Path:
        path = self.data_path("vlsafe", "harmlessness_examine.jsonl")
        return path / "harmlessness_examine.jsonl" if path.is_dir() else path

    def coco_dir(self) -> Path:
        if "coco" in self.options:
            return Path(self.options["coco"]).expanduser()
        here = self.jsonl_path().parent / "coco"
        if here.is_dir() or self.context.data_dir is None:
            return here
        return self.context.data_dir / "coco"

    def load(self) -> list[Sample]:
        path = self.jsonl_path()
        out = SampleBuilder()
        for line, obj, error in read_jsonl(path):
            sample_id = f"line-{line}"
            if error is not None or obj is None:
                out.bad(sample_id, "vlsafe", error or f"{path} line {line}: unreadable")
                continue
            where = f"{path} line {line}"
            image_id, query = str(obj.get("image_id") or "").strip(), str(obj.get("query") or "").strip()
            missing = [n for n, v in (("image_id", image_id), ("query", query)) if not v]
            if missing:
                out.bad(sample_id, "vlsafe", f"{where}: missing or empty {', '.join(missing)}")
                continue
            if "/" in image_id or "\\" in image_id or image_id.startswith("."):
                out.bad(sample_id, "vlsafe", f"{where}: image_id {image_id!r} is not a file name")
                continue
            fields = {"image_id": image_id, "caption": str(obj.get("caption") or "")}
            out.add(Sample(sample_id, "vlsafe", query, True, fields), where)
        return out.samples

    def own_request(self, sample: Sample, condition: str) -> Request:
        return Request(
            sample.text, ImageRef("file", str(self.coco_dir() / "train2017" / sample.fields["image_id"]))
        )
