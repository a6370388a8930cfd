"""POPE: yes/no questions on whether an object is in a COCO image (object hallucination).

Files (``<data>/pope/``, POPE's release layout): ``coco_pope_random.json``,
``coco_pope_popular.json``, ``coco_pope_adversarial.json`` -- JSON lines, each
``{"question_id", "image", "text", "label"}`` with ``label`` ``yes``/``no`` and ``image`` a COCO
val2014 file name -- and the images in ``<data>/pope/val2014/`` (else ``<data>/coco/val2014/``,
or ``coco=DIR``). ``split=random|popular|adversarial`` keeps one split (default: all three,
category = split). Scored by POPE's accuracy, precision, recall, F1 and yes-ratio.
"""

from __future__ import annotations

from pathlib import Path

from safegap.data.benchmarks.base import BenchmarkError, Sample, SampleBuilder, read_jsonl, register_benchmark
from safegap.data.benchmarks.capability import (
    COCO_HELP,
    INSTRUCTION_HELP,
    SHORT_ANSWER,
    CapabilityBenchmark,
    all_benign,
)

SPLITS = ("random", "popular", "adversarial")


@register_benchmark
class Pope(CapabilityBenchmark):
    name = "pope"
    option_help = {
        "instruction": INSTRUCTION_HELP,
        "split": "random, popular or adversarial (default: all three, category = split)",
        "coco": COCO_HELP,
    }
    layout = (
        "<data>/pope/coco_pope_{random,popular,adversarial}.json (JSON lines: question_id, image, text, "
        "label) and COCO val2014 images in <data>/pope/val2014/"
    )
    description = "POPE object-hallucination yes/no questions on COCO (accuracy, F1, yes-ratio)"
    metric = "pope"
    answer_instruction = SHORT_ANSWER

    def folder(self) -> Path:
        return self.data_path("pope")

    def splits(self) -> tuple[str, ...]:
        split = self.options.get("split")
        if split is None:
            return SPLITS
        if split not in SPLITS:
            raise BenchmarkError(f"benchmark {self.id!r}: split {split!r} is not one of {', '.join(SPLITS)}")
        return (split,)

    def load(self) -> list[Sample]:
        out = SampleBuilder()
        coco = self.coco_dir()
        for split in self.splits():
            path = self.folder() / f"coco_pope_{split}.json"
            for line, obj, error in read_jsonl(path):
                if error is not None or obj is None:
                    out.bad(f"{split}_line-{line}", split, error or f"{path} line {line}: unreadable")
                    continue
                where = f"{path} line {line}"
                qid = str(obj.get("question_id", "")).strip() or f"line-{line}"
                sample_id = f"{split}_{qid}"
                image, text = str(obj.get("image") or "").strip(), str(obj.get("text") or "").strip()
                label = str(obj.get("label") or "").strip().lower()
                missing = [n for n, v in (("image", image), ("text", text)) if not v]
                if missing:
                    out.bad(sample_id, split, f"{where}: missing or empty {', '.join(missing)}")
                    continue
                if label not in ("yes", "no"):
                    out.bad(sample_id, split, f"{where}: label {obj.get('label')!r} is not 'yes' or 'no'")
                    continue
                if Path(image).name != image or image.startswith("."):
                    out.bad(sample_id, split, f"{where}: image {image!r} is not a file name")
                    continue
                fields = {"question": text, "image": image, "image_path": str(coco / image)}
                out.add(Sample(sample_id, split, self.prompt(text), False, fields, answers=(label,)), where)
        return all_benign(out.samples)
