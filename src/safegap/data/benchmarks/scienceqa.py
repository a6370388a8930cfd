"""ScienceQA-IMG: the ScienceQA questions that come with an image (2,017 in the test split).

Files (``<data>/scienceqa/``, as the ScienceQA release lays them out): ``problems.json`` (an
object keyed by problem id, each with ``question``, ``choices`` (list), ``answer`` (index into
the choices), ``hint``, ``image`` (``"image.png"`` or null), ``subject``, ``split``),
``pid_splits.json`` (``{"train": [ids], "val": [...], "test": [...]}``) and images
``images/<split>/<id>/image.png``. Only problems with an image are kept; ``split=`` picks the
split (default ``test``). Category = subject. Scored by multiple-choice accuracy.
"""

from __future__ import annotations

from pathlib import Path

from safegap.data.benchmarks.base import BenchmarkError, Sample, SampleBuilder, read_json, register_benchmark
from safegap.data.benchmarks.capability import (
    INSTRUCTION_HELP,
    LETTER_ANSWER,
    CapabilityBenchmark,
    all_benign,
    lettered,
)


@register_benchmark
class ScienceQAImg(CapabilityBenchmark):
    name = "scienceqa_img"
    option_help = {
        "instruction": INSTRUCTION_HELP,
        "split": "train, val or test (default test)",
    }
    layout = (
        "<data>/scienceqa/problems.json, pid_splits.json and images/<split>/<id>/image.png "
        "(problems with an image only)"
    )
    description = "ScienceQA-IMG: multiple-choice science questions with an image (accuracy)"
    metric = "choice"
    answer_instruction = LETTER_ANSWER

    def folder(self) -> Path:
        return self.data_path("scienceqa")

    def load(self) -> list[Sample]:
        folder = self.folder()
        split = self.options.get("split", "test")
        problems_path, splits_path = folder / "problems.json", folder / "pid_splits.json"
        problems, splits = read_json(problems_path), read_json(splits_path)
        if not isinstance(problems, dict):
            raise BenchmarkError(f"{problems_path}: expected an object keyed by problem id")
        if not isinstance(splits, dict) or not isinstance(splits.get(split), list):
            known = ", ".join(sorted(splits)) if isinstance(splits, dict) else "none"
            raise BenchmarkError(f"{splits_path}: no list for split {split!r} (splits: {known})")
        out = SampleBuilder()
        for raw_pid in splits[split]:
            pid = str(raw_pid)
            where = f"{problems_path} problem {pid!r}"
            entry = problems.get(pid)
            if not isinstance(entry, dict):
                out.bad(
                    pid, "unknown", f"{where}: listed in {splits_path.name} {split!r} but not an object here"
                )
                continue
            if not entry.get("image"):
                continue  # ScienceQA-IMG: the image questions only
            category = str(entry.get("subject") or "unknown")
            question = str(entry.get("question") or "").strip()
            choices = entry.get("choices")
            answer = entry.get("answer")
            if not question:
                out.bad(pid, category, f"{where}: empty question")
                continue
            if (
                not isinstance(choices, list)
                or len(choices) < 2
                or not all(isinstance(c, str) for c in choices)
            ):
                out.bad(pid, category, f"{where}: 'choices' must be a list of at least two strings")
                continue
            if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
                out.bad(
                    pid,
                    category,
                    f"{where}: 'answer' {answer!r} is not an index into its {len(choices)} choices",
                )
                continue
            hint = str(entry.get("hint") or "").strip()
            options = tuple(c.strip() for c in choices)
            text = self.prompt(f"Context: {hint}\n{question}" if hint else question, lettered(options))
            image = folder / "images" / split / pid / str(entry["image"])
            fields = {
                "question": question,
                "hint": hint,
                "image_path": str(image),
                "grade": str(entry.get("grade", "")),
            }
            out.add(
                Sample(
                    pid, category, text, False, fields, answers=(chr(ord("A") + answer),), choices=options
                ),
                where,
            )
        return all_benign(out.samples)
