"""JailBreakV-28K and its 280-row mini set (CSV + images folder, as on the Hugging Face Hub).

Files: ``<data>/jailbreakv_28k/JailBreakV_28K/{mini_JailBreakV_28K,JailBreakV_28K}.csv`` (or the
same CSV directly in ``jailbreakv_28k/``) with columns ``id, jailbreak_query, redteam_query,
format, policy, image_path``; ``image_path`` is relative to the CSV's folder. Not bundled here
(Hub only).

Conditions: ``image`` (the jailbreak text with its image) and the generic ones (``text`` = the
jailbreak text alone). Category = the safety policy; the attack ``format`` is kept per sample.
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
    read_csv,
    register_benchmark,
)

COLUMNS = ("id", "jailbreak_query", "policy", "image_path")


@register_benchmark
class JailbreakV(Benchmark):
    name = "jailbreakv"
    description = "JailBreakV-28K: jailbreak text-image pairs (16 policies)"
    layout = (
        "<data>/jailbreakv_28k/JailBreakV_28K/JailBreakV_28K.csv (id, jailbreak_query, policy, "
        "image_path; image_path relative to the CSV). NAME:PATH overrides the CSV or its folder."
    )
    own_conditions = ("image",)
    defaults = ("image",)
    csv_name = "JailBreakV_28K.csv"

    def csv_path(self) -> Path:
        if self.arg:
            path = Path(self.arg).expanduser()
            return path / self.csv_name if path.is_dir() else path
        root = self.context.require_data_dir(self.id) / "jailbreakv_28k"
        for candidate in (root / "JailBreakV_28K" / self.csv_name, root / self.csv_name):
            if candidate.is_file():
                return candidate
        raise BenchmarkError(
            f"benchmark file not found: {root}/JailBreakV_28K/{self.csv_name} (JailBreakV-28K is not bundled; "
            "bring the Hub files in)"
        )

    def load(self) -> list[Sample]:
        path = self.csv_path()
        out = SampleBuilder()
        for line, row in read_csv(path, COLUMNS):
            where = f"{path} line {line}"
            sample_id = row["id"].strip() or f"line-{line}"
            empty = [c for c in ("jailbreak_query", "image_path") if not row[c].strip()]
            if empty:
                out.bad(sample_id, row["policy"], f"{where}: empty {', '.join(empty)}")
                continue
            image = row["image_path"].strip()
            if Path(image).is_absolute() or ".." in Path(image).parts:
                out.bad(
                    sample_id, row["policy"], f"{where}: image_path {image!r} must be relative to the CSV"
                )
                continue
            fields = {
                "image_path": image,
                "format": row.get("format", ""),
                "redteam_query": row.get("redteam_query", ""),
            }
            out.add(
                Sample(
                    sample_id,
                    row["policy"].strip() or "unknown",
                    row["jailbreak_query"].strip(),
                    True,
                    fields,
                ),
                where,
            )
        return out.samples

    def own_request(self, sample: Sample, condition: str) -> Request:
        return Request(
            sample.text, ImageRef("file", str(self.csv_path().parent / sample.fields["image_path"]))
        )


@register_benchmark
class JailbreakVMini(JailbreakV):
    name = "jailbreakv_mini"
    description = "JailBreakV-28K mini (280 rows)"
    layout = "<data>/jailbreakv_28k/JailBreakV_28K/mini_JailBreakV_28K.csv (as jailbreakv)."
    csv_name = "mini_JailBreakV_28K.csv"
