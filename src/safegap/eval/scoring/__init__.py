"""Capability scorers: from a benchmark's samples and the model's replies to its numbers.

Each capability benchmark names one scorer (its ``metric``); :func:`score` runs it. The
building blocks are plain functions on strings, usable on their own:

- :mod:`.choice`: which option a reply picks; accuracy; MMBench's circular accuracy.
- :mod:`.yesno`: yes/no verdicts; POPE's accuracy, precision, recall, F1 and yes-ratio; MME's
  acc, acc+ and summed perception/cognition scores.
- :mod:`.vqa`: the VQA answer normalisation; 10-annotator VQA accuracy; exact match.

A sample's reference lives in ``Sample.answers`` (and ``Sample.choices`` for multiple choice);
a sample that errored or whose reply is missing (``None``) is left out and counted in
``errors``, never scored as wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from safegap.data.benchmarks.base import Sample
from safegap.data.benchmarks.mme import MME_COGNITION, MME_PERCEPTION
from safegap.eval.scoring.choice import circular_accuracy, extract_choice, letter_index
from safegap.eval.scoring.vqa import exact_match, vqa_accuracy
from safegap.eval.scoring.yesno import MmeAnswer, extract_yes_no, mme_scores, parse_label, pope_scores


@dataclass(frozen=True)
class ScoreReport:
    """A scorer's result. ``values`` has one entry per sample (1/0 for right/wrong, a fraction
    for VQA accuracy, ``None`` when not scored) for bootstrap intervals and paired differences;
    ``overall`` and ``categories`` hold the benchmark's own numbers; ``primary`` names the
    headline one in ``overall``; ``chance`` is what uniform guessing would score on that headline
    number (same units), where defined."""

    metric: str
    primary: str
    values: list[float | None]
    overall: dict[str, float]
    categories: dict[str, dict[str, float]] = field(default_factory=dict)
    chance: float | None = None
    errors: int = 0


Scored = list[tuple[Sample, str]]
Summary = Callable[[Scored, Mapping[str, str]], dict[str, float]]


@dataclass(frozen=True)
class Scorer:
    """One metric: the per-sample value and the summary of a group of scored samples."""

    name: str
    description: str
    primary: str
    value: Callable[[Sample, str, Mapping[str, str]], float]
    summary: Summary
    #: Expected headline number under uniform guessing: ``chance(samples, primary)``.
    chance: Callable[[Sequence[Sample], str], float | None] = lambda samples, primary: None


def _reference(sample: Sample) -> tuple[str, ...]:
    if not sample.answers:
        raise ValueError(f"sample {sample.id!r} has no reference answer")
    return sample.answers


def _choice_value(sample: Sample, reply: str, options: Mapping[str, str]) -> float:
    choices = sample.choices or ()
    if not choices:
        raise ValueError(f"sample {sample.id!r} has no choices")
    answer = letter_index(_reference(sample)[0], len(choices))
    return float(extract_choice(reply, choices) == answer)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _choice_summary(scored: Scored, options: Mapping[str, str]) -> dict[str, float]:
    right = [_choice_value(s, r, options) for s, r in scored]
    out = {"accuracy": _mean(right)}
    groups = [s.fields.get("group", s.id) for s, _ in scored]
    if len(set(groups)) < len(groups):
        out["circular_accuracy"] = circular_accuracy(groups, [v == 1.0 for v in right])
    return out


def _choice_chance(samples: Sequence[Sample], primary: str) -> float | None:
    if primary != "circular_accuracy":
        sizes = [len(s.choices) for s in samples if s.choices]
        return _mean([1.0 / n for n in sizes]) if sizes else None
    groups: dict[str, float] = {}
    for s in samples:  # every rotation guessed right independently
        key = s.fields.get("group", s.id)
        groups[key] = groups.get(key, 1.0) / len(s.choices or ("",))
    return _mean(list(groups.values()))


def _mme_chance(samples: Sequence[Sample], primary: str) -> float:
    """Per subtask 50 (acc) + 100 * mean over images of 0.5 ** questions (acc+); summed."""
    per_image: dict[str, dict[str, int]] = {}
    for s in samples:
        images = per_image.setdefault(s.category, {})
        key = s.fields.get("image", s.id)
        images[key] = images.get(key, 0) + 1
    score = {t: 50.0 + 100.0 * _mean([0.5**q for q in imgs.values()]) for t, imgs in per_image.items()}
    if primary == "score":
        return next(iter(score.values()))
    wanted = MME_PERCEPTION if primary == "perception" else (*MME_PERCEPTION, *MME_COGNITION)
    return sum(v for t, v in score.items() if t in wanted)


def _yes_no_value(sample: Sample, reply: str, options: Mapping[str, str]) -> float:
    return float(extract_yes_no(reply) == parse_label(_reference(sample)[0], f"sample {sample.id!r}"))


def _pope_summary(scored: Scored, options: Mapping[str, str]) -> dict[str, float]:
    return pope_scores(
        [extract_yes_no(r) for _, r in scored], [_reference(s)[0] for s, _ in scored]
    ).as_dict()


def _mme_answers(scored: Scored) -> list[MmeAnswer]:
    return [
        MmeAnswer(s.category, s.fields.get("image", s.id), _reference(s)[0], extract_yes_no(r))
        for s, r in scored
    ]


def _mme_summary(scored: Scored, options: Mapping[str, str]) -> dict[str, float]:
    scores = mme_scores(_mme_answers(scored))
    if len(scores.subtasks) == 1:
        (sub,) = scores.subtasks.values()
        return {"acc": sub.acc, "acc_plus": sub.acc_plus, "score": sub.score}
    right = [_yes_no_value(s, r, options) for s, r in scored]
    return {
        "perception": scores.perception,
        "cognition": scores.cognition,
        "total": scores.total,
        "acc": 100.0 * _mean(right),
        "subtasks_missing": float(len(scores.missing)),
    }


def _vqa_value(sample: Sample, reply: str, options: Mapping[str, str]) -> float:
    return vqa_accuracy(reply, _reference(sample))


def _exact_value(sample: Sample, reply: str, options: Mapping[str, str]) -> float:
    return exact_match(reply, _reference(sample), options.get("match", "exact"))


def _mean_of(value: Callable[[Sample, str, Mapping[str, str]], float], name: str) -> Summary:
    def summary(scored: Scored, options: Mapping[str, str]) -> dict[str, float]:
        return {name: _mean([value(s, r, options) for s, r in scored])}

    return summary


SCORERS: dict[str, Scorer] = {
    s.name: s
    for s in (
        Scorer(
            "choice",
            "multiple-choice accuracy (and circular accuracy over option rotations)",
            "accuracy",
            _choice_value,
            _choice_summary,
            _choice_chance,
        ),
        Scorer(
            "pope",
            "POPE yes/no: accuracy, precision, recall, F1, yes-ratio",
            "accuracy",
            _yes_no_value,
            _pope_summary,
            lambda samples, primary: 0.5,
        ),
        Scorer(
            "mme",
            "MME: acc and acc+ per subtask, perception and cognition score sums",
            "perception",
            _yes_no_value,
            _mme_summary,
            _mme_chance,
        ),
        Scorer(
            "vqa",
            "VQA accuracy: min(#matching annotators / 3, 1), leave-one-out average",
            "vqa_accuracy",
            _vqa_value,
            _mean_of(_vqa_value, "vqa_accuracy"),
        ),
        Scorer(
            "exact_match",
            "exact match after VQA normalisation (match=contains: the answer appears in the reply)",
            "accuracy",
            _exact_value,
            _mean_of(_exact_value, "accuracy"),
        ),
    )
}


def get_scorer(metric: str) -> Scorer:
    """The scorer named ``metric``; an unknown name fails listing the known ones."""
    if metric not in SCORERS:
        raise ValueError(f"unknown capability metric {metric!r}; known: {', '.join(sorted(SCORERS))}")
    return SCORERS[metric]


def score(
    metric: str,
    samples: Sequence[Sample],
    replies: Sequence[str | None],
    options: Mapping[str, str] | None = None,
) -> ScoreReport:
    """Score ``replies`` (one per sample, ``None`` = no reply) with ``metric``: per-sample
    values, the overall numbers and the same numbers per category."""
    if len(samples) != len(replies):
        raise ValueError(f"{len(replies)} replies for {len(samples)} samples")
    scorer = get_scorer(metric)
    opts = dict(options or {})
    values: list[float | None] = []
    scored: Scored = []
    for sample, reply in zip(samples, replies, strict=True):
        if sample.error is not None or reply is None:
            values.append(None)
            continue
        values.append(scorer.value(sample, reply, opts))
        scored.append((sample, reply))
    if not scored:
        raise ValueError(f"{metric}: no sample could be scored ({len(samples)} errored or unanswered)")
    by_category: dict[str, Scored] = {}
    for sample, reply in scored:
        by_category.setdefault(sample.category, []).append((sample, reply))
    overall = scorer.summary(scored, opts)
    # Circular accuracy is the headline when rotations were run; one MME subtask has its score.
    primary = next(p for p in ("circular_accuracy", scorer.primary, "score") if p in overall)
    return ScoreReport(
        metric=metric,
        primary=primary,
        values=values,
        overall=overall,
        categories={c: scorer.summary(group, opts) for c, group in by_category.items()},
        chance=scorer.chance([s for s, _ in scored], primary),
        errors=len(samples) - len(scored),
    )


__all__ = ["SCORERS", "ScoreReport", "Scorer", "get_scorer", "score"]
