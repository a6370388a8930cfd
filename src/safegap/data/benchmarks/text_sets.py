"""Text-only harmful-request sets in CSV (AdvBench, StrongREJECT, any CSV of prompts).

They have no images of their own: the conditions are the generic ones (the CMRM setting), the
request as text only and the same text with a blank, a noise and an unrelated benign image.

- ``advbench``: ``<data>/advbench/harmful_behaviors.csv`` (``goal, target``), one category.
- ``strongreject`` / ``strongreject_small``: ``<data>/strongreject/strongreject[_small]_dataset.csv``
  (``category, source, forbidden_prompt``).
- ``text_csv:PATH``: any CSV with a ``prompt`` column (or ``goal``, ``forbidden_prompt``,
  ``Behavior``, ``question``), optional ``id``, ``category`` and ``label`` (``safe``/``benign``
  marks a request that should be answered).
"""

from __future__ import annotations

from pathlib import Path

from safegap.data.benchmarks.base import (
    Benchmark,
    BenchmarkError,
    Sample,
    SampleBuilder,
    read_csv,
    register_benchmark,
)

PROMPT_COLUMNS = ("prompt", "goal", "forbidden_prompt", "Behavior", "question")
BENIGN_LABELS = {"safe", "benign", "harmless", "0", "false"}


class TextCsvBenchmark(Benchmark):
    """A CSV of text requests; subclasses fix the file and columns."""

    folder = ""
    file_name = ""
    prompt_column: str | None = None
    category_column: str | None = None
    id_column: str | None = None
    label_column: str | None = None
    #: Not "all": that name is the overall row of every summary cell.
    default_category = "uncategorized"

    def csv_path(self) -> Path:
        path = self.data_path(self.folder, self.file_name)
        return path / self.file_name if path.is_dir() else path

    def columns(self, header_probe: Path) -> tuple[str, str | None, str | None, str | None]:
        return self.prompt_column or "prompt", self.category_column, self.id_column, self.label_column

    def load(self) -> list[Sample]:
        path = self.csv_path()
        prompt_col, cat_col, id_col, label_col = self.columns(path)
        required = [c for c in (prompt_col, cat_col, id_col, label_col) if c]
        out = SampleBuilder()
        for index, (line, row) in enumerate(read_csv(path, required)):
            where = f"{path} line {line}"
            sample_id = (row[id_col].strip() if id_col else "") or str(index)
            category = (row[cat_col].strip() if cat_col else "") or self.default_category
            text = row[prompt_col].strip()
            if not text:
                out.bad(sample_id, category, f"{where}: empty {prompt_col!r}")
                continue
            harmful = True
            if label_col:
                harmful = row[label_col].strip().lower() not in BENIGN_LABELS
            out.add(Sample(sample_id, category, text, harmful), where)
        return out.samples


@register_benchmark
class AdvBench(TextCsvBenchmark):
    name = "advbench"
    description = "AdvBench harmful behaviors (520 text requests)"
    folder, file_name, prompt_column = "advbench", "harmful_behaviors.csv", "goal"
    default_category = "advbench"


@register_benchmark
class StrongReject(TextCsvBenchmark):
    name = "strongreject"
    description = "StrongREJECT forbidden prompts (313)"
    folder, file_name = "strongreject", "strongreject_dataset.csv"
    prompt_column, category_column = "forbidden_prompt", "category"


@register_benchmark
class StrongRejectSmall(StrongReject):
    name = "strongreject_small"
    description = "StrongREJECT small set (60)"
    file_name = "strongreject_small_dataset.csv"


@register_benchmark
class TextCsv(TextCsvBenchmark):
    name = "text_csv"
    option_keys = ("category", "id", "label", "prompt")
    description = "any CSV of text requests: text_csv:PATH (prompt/goal/forbidden_prompt column)"

    def csv_path(self) -> Path:
        if not self.arg:
            raise BenchmarkError("benchmark 'text_csv' needs a path: text_csv:PATH.csv")
        return Path(self.arg).expanduser()

    def columns(self, header_probe: Path) -> tuple[str, str | None, str | None, str | None]:
        import csv

        if not header_probe.is_file():
            raise BenchmarkError(f"benchmark file not found: {header_probe}")
        with open(header_probe, newline="", encoding="utf-8-sig", errors="replace") as handle:
            header = next(csv.reader(handle), [])
        prompt = self.options.get("prompt") or next((c for c in PROMPT_COLUMNS if c in header), None)
        if prompt is None:
            raise BenchmarkError(
                f"{header_probe}: no prompt column (looked for {', '.join(PROMPT_COLUMNS)}; "
                f"header: {', '.join(header) or 'empty'})"
            )
        pick = lambda key, names: self.options.get(key) or next((c for c in names if c in header), None)  # noqa: E731
        return (
            prompt,
            pick("category", ("category", "SemanticCategory", "policy")),
            pick("id", ("id", "BehaviorID")),
            pick("label", ("label",)),
        )
