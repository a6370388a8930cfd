"""Yes/no answers: POPE (object hallucination) and MME (perception and cognition).

A reply's verdict is its first word when that is "yes" or "no"; otherwise its first sentence
decides: "yes" with no negation is yes, a negation ("no", "not", "none", "never", a "n't"
form) with no "yes" is no, and anything else (both, neither, empty) is ``None``. An
unparsed reply is wrong for every question and is never a predicted "yes".
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from safegap.data.benchmarks.mme import MME_COGNITION, MME_PERCEPTION

_TOKENS = re.compile(r"[a-z]+(?:'[a-z]+)?")
_SENTENCE_END = re.compile(r"[.!?\n]")
_NEGATIONS = frozenset({"no", "not", "none", "never", "nope", "cannot"})


def parse_label(label: str, where: str = "label") -> str:
    """``"yes"``/``"no"`` from a reference label of either case; anything else is an error."""
    value = label.strip().lower()
    if value not in ("yes", "no"):
        raise ValueError(f"{where}: {label!r} is not 'yes' or 'no'")
    return value


def extract_yes_no(reply: str) -> str | None:
    """``"yes"``, ``"no"`` or ``None`` for a free-text reply (rules in the module docstring)."""
    text = reply.strip().lower().replace("\u2019", "'")
    tokens = _TOKENS.findall(text)
    if not tokens:
        return None
    if tokens[0] in ("yes", "no"):
        return tokens[0]
    first = _TOKENS.findall(_SENTENCE_END.split(text, maxsplit=1)[0])
    has_yes = "yes" in first
    has_no = any(t in _NEGATIONS or t.endswith("n't") for t in first)
    if has_yes != has_no:
        return "yes" if has_yes else "no"
    return None


@dataclass(frozen=True)
class PopeScores:
    """POPE's five numbers (fractions in [0, 1]) plus how many replies were unparsed."""

    n: int
    accuracy: float
    precision: float
    recall: float
    f1: float
    yes_ratio: float
    unparsed: int

    def as_dict(self) -> dict[str, float]:
        return {
            "accuracy": self.accuracy,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "yes_ratio": self.yes_ratio,
            "unparsed": float(self.unparsed),
        }


def pope_scores(predicted: Sequence[str | None], labels: Sequence[str]) -> PopeScores:
    """POPE metrics with "yes" as the positive class: accuracy, precision, recall, F1 and the
    share of replies that said yes (a well-calibrated model is near the 50 % of POPE's labels).
    Precision (recall) is 0 when nothing was predicted (labelled) yes."""
    if len(predicted) != len(labels):
        raise ValueError(f"{len(predicted)} predictions for {len(labels)} labels")
    if not labels:
        raise ValueError("no questions to score")
    gold = [parse_label(label, f"label {i}") for i, label in enumerate(labels)]
    tp = sum(p == "yes" and g == "yes" for p, g in zip(predicted, gold, strict=True))
    fp = sum(p == "yes" and g == "no" for p, g in zip(predicted, gold, strict=True))
    tn = sum(p == "no" and g == "no" for p, g in zip(predicted, gold, strict=True))
    positives = sum(g == "yes" for g in gold)
    said_yes = tp + fp
    precision = tp / said_yes if said_yes else 0.0
    recall = tp / positives if positives else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return PopeScores(
        n=len(gold),
        accuracy=(tp + tn) / len(gold),
        precision=precision,
        recall=recall,
        f1=f1,
        yes_ratio=said_yes / len(gold),
        unparsed=sum(p not in ("yes", "no") for p in predicted),
    )


@dataclass(frozen=True)
class MmeSubtask:
    """One MME subtask: ``acc`` (share of questions right) and ``acc_plus`` (share of images
    with both questions right), both in percent, and ``score = acc + acc_plus`` (max 200)."""

    questions: int
    images: int
    acc: float
    acc_plus: float

    @property
    def score(self) -> float:
        return self.acc + self.acc_plus


@dataclass(frozen=True)
class MmeScores:
    """Per-subtask scores and the published sums: perception over ten subtasks (max 2000) and
    cognition over four (max 800). ``missing`` lists subtasks absent from the answers, whose
    sum is then partial and not comparable to published totals."""

    subtasks: Mapping[str, MmeSubtask]
    perception: float
    cognition: float
    missing: tuple[str, ...]

    @property
    def total(self) -> float:
        return self.perception + self.cognition


@dataclass(frozen=True)
class MmeAnswer:
    """One answered MME question: its subtask, the image it asks about, the label, the verdict."""

    subtask: str
    image: str
    label: str
    predicted: str | None


def mme_scores(answers: Iterable[MmeAnswer]) -> MmeScores:
    """MME's acc, acc+ and score per subtask, and the perception and cognition sums."""
    known = set(MME_PERCEPTION) | set(MME_COGNITION)
    per_image: dict[str, dict[str, list[bool]]] = {}
    for i, a in enumerate(answers):
        if a.subtask not in known:
            raise ValueError(
                f"answer {i}: unknown MME subtask {a.subtask!r}; known: {', '.join(sorted(known))}"
            )
        gold = parse_label(a.label, f"answer {i} label")
        per_image.setdefault(a.subtask, {}).setdefault(a.image, []).append(a.predicted == gold)
    if not per_image:
        raise ValueError("no MME answers to score")
    subtasks: dict[str, MmeSubtask] = {}
    for name, images in per_image.items():
        results = [ok for oks in images.values() for ok in oks]
        subtasks[name] = MmeSubtask(
            questions=len(results),
            images=len(images),
            acc=100.0 * sum(results) / len(results),
            acc_plus=100.0 * sum(all(oks) for oks in images.values()) / len(images),
        )
    return MmeScores(
        subtasks=subtasks,
        perception=sum(subtasks[s].score for s in MME_PERCEPTION if s in subtasks),
        cognition=sum(subtasks[s].score for s in MME_COGNITION if s in subtasks),
        missing=tuple(s for s in (*MME_PERCEPTION, *MME_COGNITION) if s not in subtasks),
    )
