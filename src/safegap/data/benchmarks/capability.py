"""What capability benchmarks share: the metric they are scored with and the image condition.

A capability benchmark's samples carry their reference (``Sample.answers``, and
``Sample.choices`` for multiple choice) and are scored by the scorer named in ``metric``
(:mod:`safegap.eval.scoring`), not by a refusal judge. ``text`` is the whole prompt the model
sees (question, options, answer instruction); the ``image`` condition pairs it with the
benchmark's image, and the generic conditions give the same words without it (``text`` = the
blind baseline: how much of the score needs the image at all).

``instruction=...`` in the spec replaces the answer instruction appended to each question
(``instruction=none`` drops it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from safegap.data.benchmarks.base import Benchmark, ImageRef, Request, Sample

#: LLaVA's evaluation prompts, the usual convention for these sets.
SHORT_ANSWER = "Answer the question using a single word or phrase."
LETTER_ANSWER = "Answer with the option's letter from the given choices directly."
#: ``safegap benchmarks``' help for the option every capability loader takes.
INSTRUCTION_HELP = "answer instruction appended to each question (none: no instruction)"
COCO_HELP = "folder of COCO val2014 images (default FOLDER/val2014, else DATA/coco/val2014)"


class CapabilityBenchmark(Benchmark):
    """Base of the capability loaders: ``metric`` names the scorer; ``answer_instruction`` is
    appended to each question unless the spec overrides it."""

    metric: ClassVar[str] = ""
    answer_instruction: ClassVar[str] = ""
    own_conditions = ("image",)
    defaults = ("image",)

    def instruction(self) -> str:
        value = self.options.get("instruction", self.answer_instruction)
        return "" if value.strip().lower() == "none" else value

    def prompt(self, question: str, options: tuple[str, ...] = ()) -> str:
        """The question, then ``options`` one per line, then the answer instruction."""
        parts = [question.strip(), *options, self.instruction()]
        return "\n".join(p for p in parts if p)

    def own_request(self, sample: Sample, condition: str) -> Request:
        return Request(sample.text, self.image_ref(sample))

    def image_ref(self, sample: Sample) -> ImageRef:
        return ImageRef("file", sample.fields["image_path"])

    def folder(self) -> Path:
        """The benchmark's local folder (each set names its own)."""
        raise NotImplementedError(f"{type(self).__name__} names no folder")

    def coco_dir(self) -> Path:
        """COCO val2014 images: ``coco=``, else ``FOLDER/val2014``, else ``DATA_DIR/coco/val2014``."""
        if "coco" in self.options:
            return Path(self.options["coco"]).expanduser()
        here = self.folder() / "val2014"
        if here.is_dir() or self.context.data_dir is None:
            return here
        return self.context.data_dir / "coco" / "val2014"


def declared_metric(bench: Benchmark | type[Benchmark]) -> str | None:
    """The metric a benchmark is scored with: its ``metric`` (a capability scorer, or
    ``over_refusal`` for benign-only sets such as MOSSBench), else ``None`` (judged safety)."""
    value = getattr(bench, "metric", "")
    return str(value) if value else None


def lettered(choices: tuple[str, ...]) -> tuple[str, ...]:
    """``("A. cat", "B. dog")`` for ``("cat", "dog")``."""
    return tuple(f"{chr(ord('A') + i)}. {c}" for i, c in enumerate(choices))


def all_benign(samples: Sequence[Sample]) -> list[Sample]:
    """``samples`` with errored rows marked benign too (``SampleBuilder.bad`` defaults to
    harmful), so a broken row of a benign-only set never lands among harmful requests."""
    return [dataclasses.replace(s, harmful=False) if s.harmful else s for s in samples]


def rotate_options(choices: Sequence[str], answer: int, shift: int) -> tuple[tuple[str, ...], int]:
    """The options moved ``shift`` places to the left (``shift=1``: B becomes A, A becomes the
    last) and where the right answer lands: one rotation of circular evaluation."""
    n = len(choices)
    if not 0 <= answer < n:
        raise ValueError(f"answer index {answer} outside {n} options")
    k = shift % n
    return tuple(choices[k:]) + tuple(choices[:k]), (answer - k) % n
