"""Aggregates of the organism diagnostics over seeds: means with a seed-level Student-t interval
(one number per seed; the seeds are the replicates), and the gap-unsafe correlation."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from safegap.gap.report import json_safe

#: Confidence level of the seed-level intervals.
LEVEL = 0.95


# -- aggregation over seeds --------------------------------------------------------------------------


def t_quantile(df: int, level: float = LEVEL) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.5 + level / 2, df))


def seed_interval(
    values: Sequence[float | None], level: float = LEVEL, probability: bool = False
) -> dict[str, Any]:
    """Mean over seeds with a Student-t interval (``None`` values are left out; one value: no
    interval). ``probability``: the interval is clipped to [0, 1]."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        return {"mean": None, "ci": [None, None], "n": 0, "values": list(values)}
    mean = statistics.fmean(xs)
    if len(xs) < 2:
        return {"mean": mean, "ci": [None, None], "n": 1, "values": list(values)}
    half = t_quantile(len(xs) - 1, level) * statistics.stdev(xs) / math.sqrt(len(xs))
    lo, hi = mean - half, mean + half
    if probability:
        lo, hi = max(lo, 0.0), min(hi, 1.0)
    return {"mean": mean, "ci": [lo, hi], "n": len(xs), "values": list(values)}


def _per_layer(curves: Sequence[Sequence[float]], probability: bool = False) -> dict[str, Any]:
    columns = list(zip(*curves, strict=True))
    ests = [seed_interval(list(c), probability=probability) for c in columns]
    return {"mean": [e["mean"] for e in ests], "ci": [e["ci"] for e in ests]}


def aggregate_stage(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Seed-level means and t-intervals of one stage's :func:`measure_checkpoint` results."""
    conditions = list(runs[0]["gap"])
    gap = {
        c: {
            "mir": seed_interval([r["gap"][c]["mir"] for r in runs]),
            "mir_reference_fast": seed_interval([r["gap"][c]["mir_reference_fast"] for r in runs]),
            "fd": _per_layer([r["gap"][c]["fd"] for r in runs]),
        }
        for c in conditions
    }
    differences = {}
    for c in runs[0]["mir_minus_filler"]:
        values = [r["mir_minus_filler"][c] for r in runs]
        differences[c] = {**seed_interval(values), "seeds_positive": sum(v > 0 for v in values)}
    bands = [r["layers"]["safety_band"] for r in runs]
    lens = {}
    for name in runs[0]["layers"]["conditions"]:
        rows = [r["layers"]["conditions"][name] for r in runs]
        lens[name] = {
            "refusal_prob_mean": _per_layer([row["refusal_prob_mean"] for row in rows], True),
            "refusal_top1_share": _per_layer([row["refusal_top1_share"] for row in rows], True),
            "start_median": seed_interval([row["start"]["median"] for row in rows]),
            "end_median": seed_interval([row["end"]["median"] for row in rows]),
        }
    out: dict[str, Any] = {
        "seeds": len(runs),
        "gap": gap,
        "mir_minus_filler": differences,
        "safety_band": {
            "per_seed": [None if b is None else b["layers"] for b in bands],
            "start": seed_interval([None if b is None else b["start"] for b in bands]),
            "end": seed_interval([None if b is None else b["end"] for b in bands]),
        },
        "lens": lens,
        "layer_skip": None,
    }
    skips = [r["layers"]["layer_skip"] for r in runs if r["layers"]["layer_skip"]]
    if skips:
        keys = ("harmful_refusal_prob", "harmful_refusal_top1", "benign_refusal_prob", "benign_refusal_top1")
        out["layer_skip"] = {
            "baseline": {k: seed_interval([s["baseline"][k] for s in skips], probability=True) for k in keys},
            "skipped": [
                {
                    "layer": row["layer"],
                    **{k: seed_interval([s["skipped"][i][k] for s in skips], probability=True) for k in keys},
                }
                for i, row in enumerate(skips[0]["skipped"])
            ],
            "largest_drop_layer": [s["largest_drop_layer"] for s in skips],
        }
    return out


#: What the correlation compares: the scene image's MIR and a first-token unsafe proxy.
CORRELATION_METRIC = "gap.benign_image.mir"
CORRELATION_UNSAFE = (
    "1 - share of harmful requests with the scene image whose greedy first token is a refusal token"
)


def unsafe_proxy(run: dict[str, Any]) -> float | None:
    """The first-token unsafe rate of harmful requests with the scene image (see CORRELATION_UNSAFE)."""
    lens = run["layers"]["conditions"].get("harmful_text_image")
    return None if lens is None else 1.0 - float(lens["refusal_top1_share"][-1])


def gap_unsafe_correlation(result: dict[str, Any]) -> dict[str, Any]:
    """Pearson and Spearman (bootstrap intervals, :func:`safegap.gap.correlate.correlate`) between
    the scene image's MIR and :func:`unsafe_proxy`: across seeds per stage, and across every
    (seed, stage) checkpoint; ``None`` with fewer than 3 points."""
    from safegap.gap.correlate import CorrelationPoint, correlate

    def points(stages: Sequence[str]) -> list[CorrelationPoint]:
        rows = []
        for seed in result["seeds"]:
            for stage in stages:
                run = result["per_seed"][str(seed)][stage]
                unsafe = unsafe_proxy(run)
                if "benign_image" in run["gap"] and unsafe is not None:
                    mir = run["gap"]["benign_image"]["mir"]
                    rows.append(CorrelationPoint(f"seed{seed} {stage}", mir, unsafe, stage))
        return rows

    def summary(rows: list[CorrelationPoint]) -> dict[str, Any] | None:
        if len(rows) < 3:
            return None
        found = correlate(rows, metric_key=CORRELATION_METRIC, unsafe_key="unsafe_proxy")
        return json_safe(found.as_dict())  # type: ignore[no-any-return]

    return {
        "metric": CORRELATION_METRIC,
        "unsafe": CORRELATION_UNSAFE,
        "per_stage": {stage: summary(points([stage])) for stage in result["stages"]},
        "all_checkpoints": summary(points(result["stages"])),
    }
