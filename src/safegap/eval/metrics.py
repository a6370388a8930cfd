"""From per-sample records to ``summary.json``: rates with bootstrap intervals, paired
differences, and judge agreement.

Per (benchmark, condition, defense, judge, category) cell -- ``category`` is ``"all"`` or one
category -- with ``n`` the samples the judge scored and ``errors`` those it could not (the
generation failed, the image was missing, the row was malformed, or the judge failed):

- ``unsafe_rate``: share of *harmful* requests whose reply the judge calls unsafe. This is the
  attack success rate; with the refusal-phrase judge it is "not refused" (keyword ASR).
- ``defense_success_rate``: ``1 - unsafe_rate`` on the same harmful requests.
- ``refusal_rate``: share of all scored replies that are refusals.
- ``over_refusal``: share of *benign* requests (XSTest safe prompts, the organism's benign
  requests) that were refused.

Each is ``{"mean", "ci": [lo, hi]}`` (95% percentile bootstrap, seeded) or ``null`` when the cell
has no such samples.

A capability benchmark's cells add its metric under its own name (``capability_metric``:
``accuracy``, ``vqa_accuracy``), ``{"mean", "ci"}`` over the records' scores
(:mod:`safegap.eval.scoring.records`; judge-independent, the same in every judge's row),
``chance`` (uniform guessing, same units; ``null`` when undefined) and ``n_scored``; the
top-level ``capability`` names each such benchmark's scorer, metric and chance. Every cell has
``fluency`` (distinct-1, distinct-2, repetition-4 of its replies, :mod:`safegap.eval.fluency`;
with ``--perplexity`` also ``perplexity``, pooled over the records' ``fluency`` NLLs). ``differences`` compare each defense with the baseline defense (``none``
when run, else the first) and each condition with ``text`` on the same samples (``other - baseline``;
paired bootstrap: per-sample differences resampled together), capability metrics included. ``agreement`` gives Cohen's kappa between every pair of
judges.

``summary.json`` also has ``run`` (written by the runner): the run's defining arguments, counts of
problems, and ``errors_by_reason`` (:func:`error_breakdown`: errored records per reason and
errored verdicts per judge and reason, most frequent first).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from itertools import combinations
from typing import Any

from safegap.eval.bootstrap import bootstrap_mean
from safegap.eval.fluency import fluency_summary
from safegap.judge.agreement import cohen_kappa

Record = dict[str, Any]
METRICS = ("unsafe_rate", "defense_success_rate", "refusal_rate", "over_refusal")
#: Metrics compared between defenses / conditions (defense success is minus the unsafe difference).
DIFFERENCE_METRICS = ("unsafe_rate", "refusal_rate", "over_refusal")


def verdict_of(record: Record, judge: str) -> dict[str, Any] | None:
    """The judge's usable verdict in ``record``; None when the sample or the judge errored."""
    if record.get("error"):
        return None
    for v in record.get("verdicts") or []:
        if v.get("judge") == judge:
            return None if v.get("error") else v
    return None


def capability_name(record: Record) -> str | None:
    """The capability metric a record is scored on (``accuracy`` ...), or None."""
    score = record.get("score")
    return str(score["name"]) if isinstance(score, dict) and score.get("name") else None


def capability_value(record: Record, metric: str) -> float | None:
    """The record's capability value when it is scored on ``metric`` (no judge involved)."""
    if record.get("error") or capability_name(record) != metric:
        return None
    value = record["score"].get("value")
    return None if value is None else float(value)


def metric_value(record: Record, judge: str, metric: str) -> float | None:
    """The per-sample value of ``metric`` (None where it does not apply): a judge's 0/1 verdict,
    or for a capability metric the record's score, whatever the judge said."""
    if metric not in METRICS:
        return capability_value(record, metric)
    v = verdict_of(record, judge)
    if v is None:
        return None
    harmful = bool(record.get("harmful", True))
    if metric in ("unsafe_rate", "defense_success_rate"):
        if not harmful or v.get("unsafe") is None:
            return None
        unsafe = float(bool(v["unsafe"]))
        return unsafe if metric == "unsafe_rate" else 1.0 - unsafe
    if metric == "refusal_rate":
        return None if v.get("refusal") is None else float(bool(v["refusal"]))
    if metric == "over_refusal":
        return None if harmful or v.get("refusal") is None else float(bool(v["refusal"]))
    raise ValueError(f"unknown metric {metric!r}")


def _estimate(values: Sequence[float], n_boot: int, seed: int) -> dict[str, Any] | None:
    return bootstrap_mean(values, n_boot=n_boot, seed=seed).as_dict() if values else None


def _ordered(values: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _categories(rows: Sequence[Record]) -> list[str]:
    return ["all", *sorted({str(r.get("category", "")) for r in rows})]


def _in_category(rows: Sequence[Record], category: str) -> list[Record]:
    return list(rows) if category == "all" else [r for r in rows if str(r.get("category", "")) == category]


def _group(
    records: Sequence[Record], key: Callable[[Record], tuple[str, ...]]
) -> dict[tuple[str, ...], list[Record]]:
    out: dict[tuple[str, ...], list[Record]] = {}
    for r in records:
        out.setdefault(key(r), []).append(r)
    return out


def metric_rows(
    records: Sequence[Record], judges: Sequence[str], n_boot: int = 2000, seed: int = 0
) -> list[Record]:
    cells = _group(records, lambda r: (r["benchmark"], r["condition"], r["defense"]))
    out = []
    for (bench, cond, defense), rows in cells.items():
        for judge in judges:
            for category in _categories(rows):
                subset = _in_category(rows, category)
                scored = [r for r in subset if verdict_of(r, judge) is not None]
                row: Record = {
                    "benchmark": bench,
                    "condition": cond,
                    "defense": defense,
                    "judge": judge,
                    "category": category,
                    "n": len(scored),
                    "errors": len(subset) - len(scored),
                    "n_harmful": sum(bool(r.get("harmful", True)) for r in scored),
                    "n_benign": sum(not r.get("harmful", True) for r in scored),
                }
                for metric in METRICS:
                    values = [v for r in scored if (v := metric_value(r, judge, metric)) is not None]
                    row[metric] = _estimate(values, n_boot, seed)
                row.update(capability_cell(subset, n_boot, seed))
                row["fluency"] = cell_fluency(subset)
                out.append(row)
    return out


def cell_fluency(rows: Sequence[Record]) -> dict[str, float | None]:
    """Distinct-1/2 and repetition-4 of a cell's replies; with ``--perplexity``, also the
    corpus perplexity (``exp(total NLL / total tokens)``) of the replies that were scored."""
    out = fluency_summary([str(r["generation"]) for r in rows if not r.get("error") and r.get("generation")])
    scored = [r["fluency"] for r in rows if isinstance(r.get("fluency"), dict) and "tokens" in r["fluency"]]
    if scored:
        tokens = sum(int(f["tokens"]) for f in scored)
        out["perplexity"] = math.exp(sum(float(f["nll"]) for f in scored) / tokens) if tokens else None
    return out


def capability_cell(rows: Sequence[Record], n_boot: int, seed: int) -> Record:
    """``{"capability_metric": NAME, NAME: {"mean", "ci"}, "chance", "n_scored"}`` for a cell of
    a capability benchmark (empty for the safety sets): the mean of the per-sample scores with
    its bootstrap interval, and chance as the mean of the scored samples' chance levels."""
    names = _ordered([n for r in rows if (n := capability_name(r)) is not None])
    if not names:
        return {}
    name = names[0]
    scored = [r for r in rows if capability_value(r, name) is not None]
    chances = [r["score"].get("chance") for r in scored]
    chance = sum(chances) / len(chances) if chances and None not in chances else None
    return {
        "capability_metric": name,
        name: _estimate([float(r["score"]["value"]) for r in scored], n_boot, seed),
        "chance": chance,
        "n_scored": len(scored),
    }


def _paired(
    a_rows: Sequence[Record], b_rows: Sequence[Record], judge: str, metric: str
) -> tuple[list[float], list[float]]:
    b_by_id = {r["sample_id"]: r for r in b_rows}
    xs: list[float] = []
    ys: list[float] = []
    for ra in a_rows:
        rb = b_by_id.get(ra["sample_id"])
        if rb is None:
            continue
        va, vb = metric_value(ra, judge, metric), metric_value(rb, judge, metric)
        if va is not None and vb is not None:
            xs.append(va)
            ys.append(vb)
    return xs, ys


def _difference_rows(
    records: Sequence[Record], judges: Sequence[str], vary: str, baseline: str | None, n_boot: int, seed: int
) -> list[Record]:
    """Rows comparing each value of ``vary`` (``defense`` or ``condition``) with ``baseline``."""
    if baseline is None:
        return []
    fixed = "condition" if vary == "defense" else "defense"
    out = []
    groups = _group(records, lambda r: (r["benchmark"], r[fixed]))
    for (bench, fixed_value), rows in groups.items():
        by_vary = _group(rows, lambda r: (r[vary],))
        base_rows = by_vary.get((baseline,))
        if base_rows is None:
            continue
        for (other,), other_rows in by_vary.items():
            if other == baseline:
                continue
            capability = _ordered([n for r in rows if (n := capability_name(r)) is not None])
            for judge in judges:
                for category in _categories(rows):
                    for metric in (*DIFFERENCE_METRICS, *capability):
                        xs, ys = _paired(
                            _in_category(other_rows, category),
                            _in_category(base_rows, category),
                            judge,
                            metric,
                        )
                        if not xs:
                            continue
                        # Paired bootstrap: resample samples, keeping each pair together. With one
                        # model (one seed) this is bootstrap_paired_difference with one group,
                        # computed vectorised.
                        est = bootstrap_mean(
                            [x - y for x, y in zip(xs, ys, strict=True)], n_boot=n_boot, seed=seed
                        )
                        out.append(
                            {
                                "compare": vary,
                                "benchmark": bench,
                                fixed: fixed_value,
                                "judge": judge,
                                "category": category,
                                "metric": metric,
                                "baseline": baseline,
                                "other": other,
                                "n": len(xs),
                                "difference": est.as_dict(),
                            }
                        )
    return out


def agreement_rows(records: Sequence[Record], judges: Sequence[str]) -> list[Record]:
    """Kappa per (benchmark, condition, defense) and pooled over everything, per judge pair
    and per verdict (unsafe, refusal), where both judges answered."""
    if len(judges) < 2:
        return []
    cells = _group(records, lambda r: (r["benchmark"], r["condition"], r["defense"]))
    cells[("all", "all", "all")] = list(records)
    out = []
    for (bench, cond, defense), rows in cells.items():
        for a, b in combinations(judges, 2):
            for field in ("unsafe", "refusal"):
                xs, ys = [], []
                for r in rows:
                    va, vb = verdict_of(r, a), verdict_of(r, b)
                    if va is None or vb is None or va.get(field) is None or vb.get(field) is None:
                        continue
                    xs.append(bool(va[field]))
                    ys.append(bool(vb[field]))
                if xs:
                    out.append(
                        {
                            "benchmark": bench,
                            "condition": cond,
                            "defense": defense,
                            "judge_a": a,
                            "judge_b": b,
                            "verdict": field,
                            **cohen_kappa(xs, ys).as_dict(),
                        }
                    )
    return out


def summarize(
    records: Sequence[Record],
    judges: Sequence[str],
    defenses: Sequence[str] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """The ``summary.json`` object (without run metadata) for ``records`` in canonical order."""
    defense_order = list(defenses) if defenses else _ordered([r["defense"] for r in records])
    base_defense = "none" if "none" in defense_order else (defense_order[0] if defense_order else None)
    conditions = _ordered([r["condition"] for r in records])
    base_condition = "text" if "text" in conditions else None
    differences = _difference_rows(records, judges, "defense", base_defense, n_boot, seed)
    differences += _difference_rows(records, judges, "condition", base_condition, n_boot, seed)
    out: dict[str, Any] = {
        "metrics": metric_rows(records, judges, n_boot, seed),
        "differences": differences,
        "agreement": agreement_rows(records, judges),
    }
    capability = capability_benchmarks(records)
    if capability:
        out["capability"] = capability
    totals = capability_totals(records)
    if totals:
        out["capability_totals"] = totals
    return out


def capability_totals(records: Sequence[Record]) -> list[Record]:
    """Per benchmark x condition x defense, the benchmark's own headline totals where they are
    more than a mean of per-sample values: MME's summed ``perception`` / ``cognition`` /
    ``total`` scores (acc + acc+ per subtask, summed; ``subtasks_missing`` lists absent subtasks,
    whose sums are then partial) and multiple choice's ``accuracy`` and, when questions were
    asked in several rotations, MMBench's ``circular_accuracy``. Unscored records are left out
    (``n`` counts the scored ones)."""
    from safegap.eval.scoring.choice import circular_accuracy
    from safegap.eval.scoring.yesno import MmeAnswer, mme_scores

    out: list[Record] = []
    groups = _group(records, lambda r: (r["benchmark"], r["condition"], r["defense"]))
    for (bench, condition, defense), rows in groups.items():
        scored = [r for r in rows if isinstance(r.get("score"), dict) and r["score"].get("value") is not None]
        scorer = scored[0]["score"]["metric"] if scored else None
        if scorer not in ("mme", "choice"):
            continue
        row: Record = {"benchmark": bench, "condition": condition, "defense": defense, "scorer": scorer}
        row["n"] = len(scored)
        right = [float(r["score"]["value"]) == 1.0 for r in scored]
        keys = [str(r["score"].get("group", r["sample_id"])) for r in scored]
        if scorer == "mme":
            answers = [
                MmeAnswer(r["category"], key, "yes", "yes" if ok else "no")
                for r, key, ok in zip(scored, keys, right, strict=True)
            ]
            mme = mme_scores(answers)
            row |= {
                "perception": mme.perception,
                "cognition": mme.cognition,
                "total": mme.total,
                "subtasks": {t: sub.score for t, sub in mme.subtasks.items()},
                "subtasks_missing": list(mme.missing),
            }
        else:
            row["accuracy"] = sum(right) / len(right)
            if len(set(keys)) < len(keys):
                row["circular_accuracy"] = circular_accuracy(keys, right)
        out.append(row)
    return out


def capability_benchmarks(records: Sequence[Record]) -> dict[str, Record]:
    """Per capability benchmark: its scorer, the metric reported and chance over its samples."""
    out: dict[str, Record] = {}
    for bench, rows in _group(records, lambda r: (r["benchmark"],)).items():
        scored = [r for r in rows if capability_name(r) is not None]
        if not scored:
            continue
        by_sample = {r["sample_id"]: r["score"].get("chance") for r in scored}
        chances = list(by_sample.values())
        out[bench[0]] = {
            "scorer": scored[0]["score"]["metric"],
            "metric": capability_name(scored[0]),
            "chance": sum(chances) / len(chances) if None not in chances else None,
        }
    return out


_LOCATION = re.compile(r"^.*? line \d+: ")  # "<file> line N: " of a malformed row
_NUMBER = re.compile(r"\d+")


def error_reason(text: str) -> str:
    """The reason of one error message without what differs per sample (file, line, paths,
    numbers), so equal causes count together: ``image not found``, ``generation failed:
    OutOfMemoryError``, ``prompt too long``, ``empty 'prompt'``..."""
    line = text.strip().splitlines()[0] if text.strip() else "unknown"
    line = _LOCATION.sub("", line)
    for prefix in ("image not found", "corrupt image"):
        if line.startswith(prefix):
            return prefix
    if line.startswith("generation failed:"):
        kind = line.removeprefix("generation failed:").strip().split(":")[0].strip()
        return f"generation failed: {kind}" if kind else "generation failed"
    if line.startswith("prompt is ") and " tokens but the model takes" in line:
        return "prompt too long"
    if line.startswith("duplicate sample id"):
        return "duplicate sample id"
    line = _NUMBER.sub("N", line)
    return line if len(line) <= 80 else line[:77] + "..."


def error_breakdown(records: Sequence[Record]) -> dict[str, int]:
    """How many records failed for each reason (``record["error"]``) and how many verdicts each
    judge could not give (``judge ID: reason``), most frequent first."""
    counts: dict[str, int] = {}
    for record in records:
        if record.get("error"):
            key = error_reason(str(record["error"]))
            counts[key] = counts.get(key, 0) + 1
        for verdict in record.get("verdicts") or []:
            if verdict.get("error"):
                key = f"judge {verdict.get('judge')}: {error_reason(str(verdict['error']))}"
                counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
