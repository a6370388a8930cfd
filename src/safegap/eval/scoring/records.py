"""Capability scores of a run's records: what ``summary.json``'s capability numbers are made of.

A run's records hold the reply but not the reference, which lives with the benchmark's
:class:`~safegap.data.benchmarks.base.Sample`. When a run is finished, each record of a
benchmark that declares a capability metric (``declared_metric``: ``choice``, ``exact_match``
...) gets a ``score`` entry::

    "score": {"metric": "exact_match", "name": "accuracy", "value": 1.0, "chance": 0.125}

``name`` is what the mean of the values is called in the summary, ``chance`` the sample's
expected value under uniform guessing (``null`` where undefined, e.g. open-ended VQA).
MME and multiple-choice records also carry ``group`` (the image an MME question asks about;
the question an MMBench rotation belongs to), so the summary can total them.
``value`` is ``null`` for a record that has no reply to score (the generation failed or the
sample was malformed); those count as errors, never as wrong answers. An *empty* reply is a
reply: it scores 0 (``"empty": true``), so a defense that silences the model shows its
capability loss instead of leaving the sample out of the mean. Benchmarks
whose metric is not a scorer (MOSSBench's ``over_refusal``, read off the judge) and the safety
sets get no ``score``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from safegap.data.benchmarks.base import Benchmark, Sample
from safegap.data.benchmarks.capability import declared_metric
from safegap.eval.scoring import SCORERS

Record = dict[str, Any]
#: Scorers whose headline totals group records: MME's acc+ by image, MMBench's circular accuracy
#: by question (``score["group"]``, read by :func:`safegap.eval.metrics.capability_totals`).
GROUPED = {"mme": "image", "choice": "group"}


def scoring_options(bench: Benchmark) -> Mapping[str, str]:
    """The options a benchmark's scorer reads: its ``scoring_options()`` when it has one (the
    organism's VQA scores with ``match=sole``), else the spec's options."""
    method = getattr(bench, "scoring_options", None)
    return dict(method()) if callable(method) else dict(bench.options)


def record_score(record: Record, bench: Benchmark, sample: Sample) -> dict[str, Any] | None:
    """The ``score`` entry of one record (``None`` when its benchmark is not scored)."""
    metric = declared_metric(bench)
    scorer = SCORERS.get(metric or "")
    if scorer is None:
        return None
    out: dict[str, Any] = {"metric": scorer.name, "name": scorer.value_name, "value": None}
    out["chance"] = scorer.sample_chance(sample) if sample.error is None and sample.answers else None
    if scorer.name in GROUPED:  # what the benchmark's totals group by (MME's acc+, circular accuracy)
        out["group"] = sample.fields.get(GROUPED[scorer.name], sample.id)
    reply = record.get("generation")
    if record.get("error") or sample.error is not None or not isinstance(reply, str):
        return out
    if not reply.strip():  # answered nothing: wrong, not missing
        return {**out, "value": 0.0, "empty": True}
    try:
        out["value"] = scorer.value(sample, reply, scoring_options(bench))
    except ValueError as exc:  # a sample without its reference: reported, never scored as wrong
        out["error"] = str(exc).splitlines()[0]
    return out


def score_records(records: Iterable[Record], items: Iterable[tuple[Benchmark, Sample]]) -> list[Record]:
    """``records`` with a ``score`` entry where their benchmark declares a capability scorer
    (records of other benchmarks come back unchanged). ``items``: every (benchmark, sample) of
    the run's plan, matched to records by benchmark id and sample id."""
    index = {(bench.id, sample.id): (bench, sample) for bench, sample in items}
    out = []
    for record in records:
        found = index.get((record.get("benchmark", ""), record.get("sample_id", "")))
        entry = record_score(record, *found) if found else None
        if entry is None:
            record = {k: v for k, v in record.items() if k != "score"}
        else:
            record = {**record, "score": entry}
        out.append(record)
    return out
