"""Plots for the HTML report, returned as base64 PNG strings.

Figures are drawn with matplotlib's object API on an Agg canvas (no pyplot, no global backend
switch), so the report works headless and does not disturb a user's interactive session.
"""

from __future__ import annotations

import base64
import io
import re
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


def display_spec(spec: str) -> str:
    """A defense spec for a legend: file arguments by their name only
    (``cmrm:/runs/x/shift.safetensors,alpha=1`` -> ``cmrm:shift.safetensors,alpha=1``)."""
    return re.sub(r"(?<=:)[^,+:]*[/\\]([^/\\,+]+)", r"\1", spec)


#: Most bar groups drawn side by side; more categories are drawn as horizontal bars, one row each,
#: so the figure grows in height (readable when scrolled) instead of shrinking to fit the page.
MAX_VERTICAL_GROUPS = 12


def category_bars(rows: Sequence[Row], metric: str, title: str) -> str | None:
    """Grouped bars: one group per category, one bar per (condition, defense), 95% CI whiskers.
    A measured 0 is drawn as a line at 0 (a bar's edge), so it does not read as missing data."""
    cats = sorted({r["category"] for r in rows if r["category"] != "all" and r.get(metric)})
    series = list(dict.fromkeys((r["condition"], r["defense"]) for r in rows if r.get(metric)))
    if not cats or not series:
        return None
    horizontal = len(cats) > MAX_VERTICAL_GROUPS
    legend_height = 0.18 * ((len(series) + 1) // 2) + 0.2
    if horizontal:
        size = (8.5, 0.9 + legend_height + len(cats) * (0.07 * len(series) + 0.1))
    else:
        size = (max(6.0, 0.55 * len(cats) * max(1, len(series)) ** 0.5 + 2), 3.4 + legend_height)
    fig = Figure(figsize=size, layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / len(series)
    lookup = {(r["category"], r["condition"], r["defense"]): r[metric] for r in rows if r.get(metric)}
    for k, (cond, defense) in enumerate(series):
        pos, vals, lo, hi = [], [], [], []
        for i, cat in enumerate(cats):
            est = lookup.get((cat, cond, defense))
            if est is None:
                continue
            # The horizontal layout's y axis points down, so series run top to bottom there.
            pos.append(i + width * (k + 0.5) - 0.4)
            vals.append(est["mean"])
            lo.append(est["mean"] - est["ci"][0])
            hi.append(est["ci"][1] - est["mean"])
        label = _short(f"{cond} / {display_spec(defense)}", 70)
        if horizontal:
            bars = ax.barh(pos, vals, height=width, xerr=[lo, hi], capsize=2, label=label)
        else:
            bars = ax.bar(pos, vals, width=width, yerr=[lo, hi], capsize=2, label=label)
        for bar in bars:
            bar.set_edgecolor(bar.get_facecolor())
            bar.set_linewidth(1.5)
    names = [_short(c, 34) for c in cats]
    if horizontal:
        ax.set_yticks(range(len(cats)))
        ax.set_yticklabels(names, fontsize=8)
        ax.set_ylim(len(cats) - 0.5, -0.5)
        ax.set_xlim(-0.02, 1.05)
        ax.set_xlabel(METRIC_LABELS.get(metric, metric))
        ax.grid(axis="x", alpha=0.3)
    else:
        ax.set_xticks(range(len(cats)))
        ax.set_xticklabels(names, rotation=35, ha="right", fontsize=8)
        ax.set_ylim(-0.02, 1.05)
        ax.set_ylabel(METRIC_LABELS.get(metric, metric))
        ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.set_title(title, fontsize=10)
    fig.legend(fontsize=7, ncol=2 if len(series) > 1 else 1, loc="outside lower center")
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
