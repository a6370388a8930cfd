"""XSTest: 250 safe prompts that look harmful and 200 unsafe contrasts (over-refusal).

File: ``<data>/xstest/xstest_prompts.csv`` (``id, prompt, type, label``). ``label == "safe"``
marks requests a model should answer (their refusals are over-refusals); ``type`` is the
category. Conditions: the generic ones; by default ``text`` and ``blank_image`` (the usual
multimodal variant).
"""

from __future__ import annotations

from pathlib import Path

from safegap.data.benchmarks.base import Benchmark, Sample, SampleBuilder, read_csv, register_benchmark

LABELS = {"safe": False, "unsafe": True}


@register_benchmark
class XSTest(Benchmark):
    name = "xstest"
    description = "XSTest over-refusal suite (250 safe lookalikes, 200 unsafe contrasts)"
    layout = "<data>/xstest/xstest_prompts.csv (id, prompt, type, label). NAME:PATH overrides the CSV."
    defaults = ("text", "blank_image")

    def csv_path(self) -> Path:
        path = self.data_path("xstest", "xstest_prompts.csv")
        return path / "xstest_prompts.csv" if path.is_dir() else path

    def load(self) -> list[Sample]:
        path = self.csv_path()
        out = SampleBuilder()
        for line, row in read_csv(path, ("id", "prompt", "type", "label")):
            where = f"{path} line {line}"
            sample_id = row["id"].strip() or f"line-{line}"
            label = row["label"].strip().lower()
            if label not in LABELS:
                out.bad(sample_id, row["type"], f"{where}: label {row['label']!r} is not 'safe' or 'unsafe'")
                continue
            if not row["prompt"].strip():
                out.bad(sample_id, row["type"], f"{where}: empty 'prompt'")
                continue
            out.add(
                Sample(
                    sample_id,
                    row["type"].strip() or "unknown",
                    row["prompt"].strip(),
                    LABELS[label],
                    {"label": label, "focus": row.get("focus", "")},
                ),
                where,
            )
        return out.samples
