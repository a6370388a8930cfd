"""MME: yes/no questions in 14 subtasks (10 perception, 4 cognition), two per image.

Files (``<data>/mme/``, the ``MME_Benchmark_release_version`` folder): one folder per subtask
(``existence``, ``count``, ..., ``code_reasoning``); in it either ``images/`` plus
``questions_answers_YN/`` (artwork, celebrity, landmark, posters, scene) or the images and
their question files side by side. A question file ``<stem>.txt`` belongs to the image
``<stem>.<png|jpg|...>`` and holds one ``question<TAB>Yes|No`` per line. Category = subtask;
scored by acc, acc+ (both questions of an image right) and the summed perception/cognition
scores. Absent subtask folders are skipped (the sums are then partial, and say so).
"""

from __future__ import annotations

from pathlib import Path

from safegap.data.benchmarks.base import (
    IMAGE_SUFFIXES,
    BenchmarkError,
    Sample,
    SampleBuilder,
    register_benchmark,
)
from safegap.data.benchmarks.capability import INSTRUCTION_HELP, CapabilityBenchmark, all_benign
from safegap.errors import UserError, decode_utf8

#: MME's subtasks, under the folder names of its release; perception sums ten, cognition four.
MME_PERCEPTION = (
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
)
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


def _image_for(folder: Path, stem: str) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        for candidate in (folder / f"{stem}{suffix}", folder / f"{stem}{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    return None


@register_benchmark
class MME(CapabilityBenchmark):
    name = "mme"
    option_help = {"instruction": INSTRUCTION_HELP}
    layout = (
        "<data>/mme/<subtask>/ (MME_Benchmark_release_version): images and <stem>.txt question files "
        "(question<TAB>Yes|No), or images/ + questions_answers_YN/"
    )
    description = "MME perception (10 subtasks) and cognition (4): acc, acc+, summed scores"
    metric = "mme"

    def load(self) -> list[Sample]:
        root = self.data_path("mme")
        present = [s for s in (*MME_PERCEPTION, *MME_COGNITION) if (root / s).is_dir()]
        if not present:
            raise BenchmarkError(
                f"benchmark file not found: no MME subtask folder ({', '.join(MME_PERCEPTION[:3])}, ...) in {root}"
            )
        out = SampleBuilder()
        for subtask in present:
            folder = root / subtask
            qa_dir, image_dir = folder / "questions_answers_YN", folder / "images"
            if not qa_dir.is_dir():
                qa_dir = image_dir = folder
            for path in sorted(qa_dir.glob("*.txt")):
                self._read_questions(out, subtask, path, image_dir)
        return all_benign(out.samples)

    def _read_questions(self, out: SampleBuilder, subtask: str, path: Path, image_dir: Path) -> None:
        stem = path.stem
        group = f"{subtask}/{stem}"
        try:
            lines = decode_utf8(path.read_bytes(), path).splitlines()
        except UserError as exc:
            out.bad(f"{group}/0", subtask, str(exc))
            return
        image = _image_for(image_dir, stem)
        rows = [(n, line) for n, line in enumerate(lines, start=1) if line.strip()]
        if not rows:
            out.bad(f"{group}/0", subtask, f"{path}: no questions")
        for n, line in rows:
            sample_id = f"{group}/{n}"
            where = f"{path} line {n}"
            if image is None:
                out.bad(sample_id, subtask, f"{where}: no image {stem}.* in {image_dir}")
                continue
            question, sep, answer = line.rpartition("\t")
            label = answer.strip().lower()
            if not sep or not question.strip():
                out.bad(sample_id, subtask, f"{where}: expected 'question<TAB>Yes|No'")
                continue
            if label not in ("yes", "no"):
                out.bad(sample_id, subtask, f"{where}: answer {answer.strip()!r} is not Yes or No")
                continue
            fields = {"question": question.strip(), "image": group, "image_path": str(image)}
            out.add(Sample(sample_id, subtask, self.prompt(question), False, fields, answers=(label,)), where)
