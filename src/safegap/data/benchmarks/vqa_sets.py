"""Open-ended VQA sets scored with the VQA accuracy over 10 annotators: TextVQA and VQAv2.

TextVQA (``<data>/textvqa/``): ``TextVQA_0.5.1_val.json`` (``{"data": [{"question_id",
"question", "image_id", "answers": [10 strings]}, ...]}``) and the images
``train_images/<image_id>.jpg`` (the validation questions use the train images folder).
Category = ``textvqa``.

VQAv2 (``<data>/vqav2/``): ``v2_OpenEnded_mscoco_val2014_questions.json`` (``{"questions":
[{"question_id", "image_id", "question"}]}``), ``v2_mscoco_val2014_annotations.json``
(``{"annotations": [{"question_id", "answer_type", "answers": [{"answer", ...}] x 10}]}``) and
the COCO images ``val2014/COCO_val2014_<image_id, 12 digits>.jpg`` (else
``<data>/coco/val2014/``, or ``coco=DIR``). Category = answer type (``yes/no``, ``number``,
``other``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safegap.data.benchmarks.base import BenchmarkError, Sample, SampleBuilder, read_json, register_benchmark
from safegap.data.benchmarks.capability import (
    COCO_HELP,
    INSTRUCTION_HELP,
    SHORT_ANSWER,
    CapabilityBenchmark,
    all_benign,
)


def _answers(raw: Any) -> tuple[str, ...] | None:
    """The annotators' answers as strings (VQAv2 objects or TextVQA strings); None if malformed."""
    if not isinstance(raw, list) or not raw:
        return None
    out = []
    for item in raw:
        value = item.get("answer") if isinstance(item, dict) else item
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            return None
        out.append(str(value))
    return tuple(out)


def _entries(data: Any, key: str, path: Path) -> list[Any]:
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise BenchmarkError(f"{path}: expected an object with a {key!r} list")
    return list(data[key])


@register_benchmark
class TextVQA(CapabilityBenchmark):
    name = "textvqa"
    option_help = {"instruction": INSTRUCTION_HELP}
    layout = "<data>/textvqa/TextVQA_0.5.1_val.json (data: question_id, question, image_id, answers x10) and train_images/<image_id>.jpg"
    description = "TextVQA validation: questions about text in images (VQA accuracy, 10 annotators)"
    metric = "vqa"
    answer_instruction = SHORT_ANSWER

    def json_path(self) -> Path:
        path = self.data_path("textvqa", "TextVQA_0.5.1_val.json")
        return path / "TextVQA_0.5.1_val.json" if path.is_dir() else path

    def load(self) -> list[Sample]:
        path = self.json_path()
        images = path.parent / "train_images"
        out = SampleBuilder()
        for i, entry in enumerate(_entries(read_json(path), "data", path)):
            where = f"{path} data[{i}]"
            if not isinstance(entry, dict):
                out.bad(f"item-{i}", "textvqa", f"{where}: expected an object")
                continue
            qid = str(entry.get("question_id", "")).strip() or f"item-{i}"
            question, image_id = (
                str(entry.get("question") or "").strip(),
                str(entry.get("image_id") or "").strip(),
            )
            missing = [n for n, v in (("question", question), ("image_id", image_id)) if not v]
            if missing:
                out.bad(qid, "textvqa", f"{where}: missing or empty {', '.join(missing)}")
                continue
            if Path(image_id).name != image_id or image_id.startswith("."):
                out.bad(qid, "textvqa", f"{where}: image_id {image_id!r} is not a file name")
                continue
            answers = _answers(entry.get("answers"))
            if answers is None:
                out.bad(qid, "textvqa", f"{where}: 'answers' must be a non-empty list of strings")
                continue
            fields = {"question": question, "image_path": str(images / f"{image_id}.jpg")}
            out.add(Sample(qid, "textvqa", self.prompt(question), False, fields, answers=answers), where)
        return all_benign(out.samples)


@register_benchmark
class VQAv2(CapabilityBenchmark):
    name = "vqav2"
    option_help = {"instruction": INSTRUCTION_HELP, "coco": COCO_HELP}
    layout = (
        "<data>/vqav2/v2_OpenEnded_mscoco_val2014_questions.json, v2_mscoco_val2014_annotations.json "
        "and COCO val2014 images in <data>/vqav2/val2014/"
    )
    description = "VQAv2 val2014 open-ended questions on COCO (VQA accuracy, 10 annotators)"
    metric = "vqa"
    answer_instruction = SHORT_ANSWER

    def folder(self) -> Path:
        return self.data_path("vqav2")

    def load(self) -> list[Sample]:
        folder = self.folder()
        q_path = folder / "v2_OpenEnded_mscoco_val2014_questions.json"
        a_path = folder / "v2_mscoco_val2014_annotations.json"
        questions = _entries(read_json(q_path), "questions", q_path)
        annotations: dict[str, dict[str, Any]] = {}
        for i, ann in enumerate(_entries(read_json(a_path), "annotations", a_path)):
            if not isinstance(ann, dict) or "question_id" not in ann:
                raise BenchmarkError(f"{a_path} annotations[{i}]: expected an object with a 'question_id'")
            annotations[str(ann["question_id"])] = ann
        coco = self.coco_dir()
        out = SampleBuilder()
        for i, entry in enumerate(questions):
            where = f"{q_path} questions[{i}]"
            if not isinstance(entry, dict):
                out.bad(f"item-{i}", "unknown", f"{where}: expected an object")
                continue
            qid = str(entry.get("question_id", "")).strip() or f"item-{i}"
            ann = annotations.get(qid)
            category = str(ann.get("answer_type") or "unknown") if ann else "unknown"
            question, image_id = str(entry.get("question") or "").strip(), entry.get("image_id")
            if not question:
                out.bad(qid, category, f"{where}: empty question")
                continue
            if isinstance(image_id, bool) or not isinstance(image_id, int) or image_id < 0:
                out.bad(qid, category, f"{where}: image_id {image_id!r} is not a whole number")
                continue
            if ann is None:
                out.bad(qid, category, f"{where}: question {qid} has no annotation in {a_path.name}")
                continue
            answers = _answers(ann.get("answers"))
            if answers is None:
                out.bad(
                    qid,
                    category,
                    f"{a_path} question {qid}: 'answers' must be a non-empty list of {{answer}}",
                )
                continue
            image = coco / f"COCO_val2014_{image_id:012d}.jpg"
            fields = {
                "question": question,
                "image_path": str(image),
                "question_type": str(ann.get("question_type", "")),
            }
            out.add(Sample(qid, category, self.prompt(question), False, fields, answers=answers), where)
        return all_benign(out.samples)
