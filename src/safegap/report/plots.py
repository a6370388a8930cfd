"""Plots for the HTML report, returned as base64 PNG strings.

Figures are drawn with matplotlib's object API on an Agg canvas (no pyplot, no global backend
switch), so the report works headless and does not disturb a user's interactive session.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

Row = dict[str, Any]
METRIC_LABELS = {
    "unsafe_rate": "unsafe rate (ASR)",
    "refusal_rate": "refusal rate",
    "over_refusal": "over-refusal",
    "defense_success_rate": "defense success rate",
}


def _png(fig: Figure) -> str:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _short(text: str, width: int = 28) -> str:
    return text if len(text) <= width else text[: width - 1] + "\u2026"


def category_bars(rows: Sequence[Row], metric: str, title: str) -> str | None:
    """Grouped bars: one group per category, one bar per (condition, defense), 95% CI whiskers."""
    cats = sorted({r["category"] for r in rows if r["category"] != "all" and r.get(metric)})
    series = list(dict.fromkeys((r["condition"], r["defense"]) for r in rows if r.get(metric)))
    if not cats or not series:
        return None
    fig = Figure(figsize=(max(6.0, 0.55 * len(cats) * max(1, len(series)) ** 0.5 + 2), 3.8))
    ax = fig.add_subplot()
    width = 0.8 / len(series)
    lookup = {(r["category"], r["condition"], r["defense"]): r[metric] for r in rows if r.get(metric)}
    for k, (cond, defense) in enumerate(series):
        xs, ys, lo, hi = [], [], [], []
        for i, cat in enumerate(cats):
            est = lookup.get((cat, cond, defense))
            if est is None:
                continue
            xs.append(i - 0.4 + width * (k + 0.5))
            ys.append(est["mean"])
            lo.append(est["mean"] - est["ci"][0])
            hi.append(est["ci"][1] - est["mean"])
        ax.bar(xs, ys, width=width, yerr=[lo, hi], capsize=2, label=_short(f"{cond} / {defense}", 40))
    ax.set_xticks(range(len(cats)))
    ax.set_xticklabels([_short(c) for c in cats], rotation=35, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png(fig)


def alpha_sweep(points: Sequence[tuple[float, str, str, dict[str, Any] | None]], title: str) -> str | None:
    """Lines of a metric against alpha: ``points`` are ``(alpha, series label, metric, estimate)``."""
    by_series: dict[tuple[str, str], list[tuple[float, dict[str, Any]]]] = {}
    for alpha, label, metric, est in points:
        if est is not None:
            by_series.setdefault((label, metric), []).append((alpha, est))
    if not by_series:
        return None
    fig = Figure(figsize=(6.5, 3.6))
    ax = fig.add_subplot()
    for (label, metric), values in by_series.items():
        values.sort(key=lambda p: p[0])
        xs = [a for a, _ in values]
        ys = [e["mean"] for _, e in values]
        style = "-o" if metric == "unsafe_rate" else "--s"
        (line,) = ax.plot(xs, ys, style, label=_short(f"{METRIC_LABELS.get(metric, metric)}: {label}", 50))
        ax.fill_between(
            xs,
            [e["ci"][0] for _, e in values],
            [e["ci"][1] for _, e in values],
            color=line.get_color(),
            alpha=0.15,
        )
    ax.set_xlabel("alpha")
    ax.set_ylabel("rate")
    ax.set_ylim(-0.02, 1.05)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png(fig)
