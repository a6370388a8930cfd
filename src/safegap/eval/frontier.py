"""The safety-utility frontier: one point per defense and strength, read from ``summary.json``.

Plain functions (no model): :func:`expand_grid` turns defense specs and an alpha grid into the
specs one evaluation run takes; :func:`frontier_points` reads a finished run's summary into
:class:`Point` s; :func:`pareto_front` flags the points no other point beats on both axes;
:func:`select` is the stated rule for choosing a strength; :func:`frontier_json` and
:func:`plot_frontier` write ``frontier.json`` and ``frontier.png``. ``safegap frontier``
(:mod:`safegap.cli.frontier`) runs the grid through :func:`safegap.eval.runner.run_eval`.

Axes (every number is a ``{"mean", "ci": [lo, hi]}`` cell of ``summary["metrics"]`` at
``category == "all"`` for one judge):

* **y = harmful refusal**: ``defense_success_rate`` (1 - unsafe rate: with the refusal judge, the
  share of harmful requests refused) on the safety benchmarks, in the *worst* cell (lowest
  mean over benchmark x condition), because a defense is as safe as its weakest condition.
* **x = capability** (when a utility benchmark reports one): the cell's capability metric, named
  by the cell's ``capability_metric`` key (``summary["metrics"][i]["capability_metric"] ==
  "exact_match"`` and ``summary["metrics"][i]["exact_match"] == {"mean": .., "ci": [..]}``; the
  run's ``summary["capability"][BENCH]["metric"]`` names it too), worst cell over the utility
  benchmarks' own conditions (``capability_conditions``); higher is better.
* **x = over-refusal** otherwise (or with ``x="over_refusal"``): ``over_refusal`` (benign requests
  refused), worst (highest) cell over every benchmark of the run and its conditions; lower is
  better. Every point carries both, where measured.

The selection rule (:func:`select`) lives in :mod:`safegap.selection`, shared with CMRM's tuning:
the largest harmful-refusal recovery over ``none`` with capability loss <= 0.02 and worst-condition
over-refusal <= ``none``'s + 0.05 (both bounds options).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from safegap.errors import UserError
from safegap.selection import (
    BASELINE,
    MAX_CAPABILITY_LOSS,
    MAX_OVER_REFUSAL_RISE,
    RULE,
    Estimate,
    Point,
    Selection,
    XAxis,
    select,
)
from safegap.specs import Spec, parse_spec

__all__ = [
    "BASELINE",
    "DEFAULT_ALPHAS",
    "MAX_CAPABILITY_LOSS",
    "MAX_OVER_REFUSAL_RISE",
    "RULE",
    "STRENGTH_OPTION",
    "Estimate",
    "GridEntry",
    "Point",
    "Selection",
    "XAxis",
    "default_axis",
    "expand_grid",
    "frontier_json",
    "frontier_points",
    "pareto_front",
    "parse_alphas",
    "plot_frontier",
    "select",
    "write_frontier",
]

#: The option each defense's strength is called by (the alpha grid sets it); others run once.
STRENGTH_OPTION: dict[str, str] = {
    "cmrm": "alpha",
    "cmrm_sample": "alpha",
    "vlm_guard": "alpha",
    "refusal_direction": "strength",
}
DEFAULT_ALPHAS: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0)


@dataclass(frozen=True)
class GridEntry:
    """One defense spec to run: ``family`` is the spec without its strength (a plot line)."""

    spec: str
    family: str
    alpha: float | None


# -- the grid ------------------------------------------------------------------------------------
def _split_parts(spec: str, known: Iterable[str]) -> list[str]:
    """``A+B+C`` composition parts (a ``+`` splits only before a known defense name)."""
    names = set(known)
    parts: list[str] = []
    for piece in spec.split("+"):
        head = piece.split(":", 1)[0].strip()
        if parts and head not in names:
            parts[-1] += "+" + piece
        else:
            parts.append(piece)
    return [p.strip() for p in parts]


def expand_grid(
    specs: Sequence[str], alphas: Sequence[float], known: Iterable[str] = STRENGTH_OPTION
) -> list[GridEntry]:
    """Each spec at every alpha when its last (base) part has a strength option it does not set
    (:data:`STRENGTH_OPTION`), else once; ``none`` first, always, as the baseline."""
    names = {*known, *STRENGTH_OPTION, BASELINE}
    out: list[GridEntry] = [GridEntry(BASELINE, BASELINE, None)]
    for spec in specs:
        parts = _split_parts(spec.strip(), names)
        base = (
            parse_spec(parts[-1], kind="defense") if parts[-1].split(":", 1)[0] != "system_prompt" else None
        )
        option = STRENGTH_OPTION.get(base.name) if base is not None else None
        if base is None or option is None:
            entries = [GridEntry(spec.strip(), spec.strip(), None)]
        elif option in base.options:
            try:
                value = float(base.options[option])
            except ValueError:
                raise UserError(
                    f"defense {spec}: {option}={base.options[option]!r} is not a number"
                ) from None
            entries = [GridEntry(spec.strip(), spec.strip(), value)]
        else:
            if not alphas:
                raise UserError(f"defense {spec}: give --alpha-grid or set {option}= in the spec")
            entries = []
            for alpha in alphas:
                grown = Spec(base.name, base.arg, {**base.options, option: f"{alpha:g}"})
                entries.append(GridEntry("+".join([*parts[:-1], str(grown)]), spec.strip(), float(alpha)))
        out += [e for e in entries if e.spec not in {o.spec for o in out}]
    return out


def parse_alphas(text: str) -> list[float]:
    """``"0.25,0.5,1"`` -> ``[0.25, 0.5, 1.0]`` (finite, distinct, in the order given)."""
    out: list[float] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            value = float(part)
        except ValueError:
            raise UserError(f"--alpha-grid {text!r}: {part!r} is not a number") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise UserError(f"--alpha-grid {text!r}: {part!r} is not finite")
        if value not in out:
            out.append(value)
    if not out:
        raise UserError(f"--alpha-grid {text!r}: no values")
    return out


# -- reading summary.json -----------------------------------------------------------------------
def _estimate(cell: Any, where: str) -> Estimate | None:
    if not isinstance(cell, Mapping) or "mean" not in cell:
        return None
    ci = cell.get("ci") or [cell["mean"], cell["mean"]]
    return Estimate(float(cell["mean"]), float(ci[0]), float(ci[1]), where)


def capability_metric_of(
    summary: Mapping[str, Any], benchmark: str, row: Mapping[str, Any] | None = None
) -> str | None:
    """The capability metric a benchmark's cells report (module docstring), or None."""
    if row is not None and isinstance(row.get("capability_metric"), str):
        return str(row["capability_metric"])
    info = (summary.get("capability") or {}).get(benchmark)
    return str(info["metric"]) if isinstance(info, Mapping) and info.get("metric") else None


def _worst(cells: Sequence[Estimate], highest: bool) -> Estimate | None:
    if not cells:
        return None
    return max(cells, key=lambda e: e.mean) if highest else min(cells, key=lambda e: e.mean)


def frontier_points(
    summary: Mapping[str, Any],
    grid: Sequence[GridEntry],
    safety: Sequence[str],
    utility: Sequence[str],
    judge: str | None = None,
    capability_metric: str | None = None,
    capability_conditions: Mapping[str, Sequence[str]] | None = None,
) -> list[Point]:
    """One :class:`Point` per grid entry from a finished run's summary (axes in the module
    docstring). ``safety`` / ``utility`` are benchmark ids as the summary names them; ``judge``
    defaults to the run's first judge; ``capability_conditions`` limits a utility benchmark's
    capability cells to its own conditions (the benchmark's defaults, e.g. ``image``: the same
    questions without their image are not a capability measurement)."""
    rows = [r for r in summary.get("metrics") or [] if r.get("category", "all") == "all"]
    judges = list((summary.get("run") or {}).get("judge_ids") or dict.fromkeys(r["judge"] for r in rows))
    judge = judge or (judges[0] if judges else None)
    if judge is None or judge not in judges:
        raise UserError(f"summary has no judge {judge!r} (judges: {', '.join(judges) or 'none'})")
    rows = [r for r in rows if r.get("judge") == judge]
    points = []
    for entry in grid:
        mine = [r for r in rows if r.get("defense") == entry.spec]
        if not mine:
            raise UserError(f"summary has no results for defense {entry.spec!r}")
        where = lambda r: f"{r['benchmark']}:{r['condition']}"  # noqa: E731
        refusal = [
            e
            for r in mine
            if r["benchmark"] in safety and (e := _estimate(r.get("defense_success_rate"), where(r)))
        ]
        harmful = _worst(refusal, highest=False)
        if harmful is None:
            raise UserError(
                f"defense {entry.spec!r}: no harmful-refusal cell on {', '.join(safety)} (no harmful samples?)"
            )
        over = _worst([e for r in mine if (e := _estimate(r.get("over_refusal"), where(r)))], highest=True)
        metric = capability_metric
        caps: list[Estimate] = []
        for r in mine:
            if r["benchmark"] not in utility:
                continue
            own = (capability_conditions or {}).get(r["benchmark"])
            if own is not None and r["condition"] not in own:
                continue
            name = capability_metric or capability_metric_of(summary, r["benchmark"], r)
            if name and (e := _estimate(r.get(name), where(r))):
                caps.append(e)
                metric = metric or name
        points.append(
            Point(entry.spec, entry.family, entry.alpha, harmful, over, _worst(caps, highest=False), metric)
        )
    return points


def default_axis(points: Sequence[Point]) -> XAxis:
    """``capability`` when every point has it, else ``over_refusal``."""
    return "capability" if points and all(p.capability is not None for p in points) else "over_refusal"


def pareto_front(points: Sequence[Point], axis: XAxis) -> list[Point]:
    """``points`` with ``pareto`` set on those that no other point dominates: at least as good on
    both axes (higher harmful refusal; higher capability or lower over-refusal) and better on one.
    A point without an x value is never on the front."""
    sign = 1.0 if axis == "capability" else -1.0

    def xy(p: Point) -> tuple[float, float] | None:
        x = p.x(axis)
        return None if x is None else (sign * x.mean, p.harmful_refusal.mean)

    scored = [xy(p) for p in points]
    out = []
    for p, a in zip(points, scored, strict=True):
        on = a is not None and not any(
            b is not None and b[0] >= a[0] and b[1] >= a[1] and (b[0] > a[0] or b[1] > a[1]) for b in scored
        )
        out.append(replace(p, pareto=on))
    return out


# -- writing -------------------------------------------------------------------------------------
def axis_label(axis: XAxis, points: Sequence[Point]) -> str:
    if axis == "capability":
        metric = next((p.capability_metric for p in points if p.capability_metric), "capability")
        return f"capability: {metric} (worst condition)"
    return "over-refusal: benign requests refused (worst condition)"


def frontier_json(
    points: Sequence[Point],
    axis: XAxis,
    selections: Mapping[str, Selection],
    meta: Mapping[str, Any],
) -> dict[str, Any]:
    return {
        **meta,
        "x": {"axis": axis, "label": axis_label(axis, points), "higher_is_better": axis == "capability"},
        "y": {"label": "harmful refusal: defense success rate (worst condition)", "higher_is_better": True},
        "points": [p.as_dict(axis) for p in points],
        "pareto": [p.defense for p in points if p.pareto],
        "selection": {family: s.as_dict() for family, s in selections.items()},
    }


def write_frontier(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def plot_frontier(points: Sequence[Point], axis: XAxis, path: Path, title: str = "") -> None:
    """``frontier.png``: one line per defense family over its strengths, 95% intervals on both
    axes, the Pareto front drawn as a dashed step line (matplotlib, headless Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.0, 5.0), dpi=120)
    placed = [(p, x) for p in points if (x := p.x(axis)) is not None]
    for family in dict.fromkeys(p.family for p in points):
        mine = sorted(((p, x) for p, x in placed if p.family == family), key=lambda px: px[0].alpha or 0.0)
        if not mine:
            continue
        xs = [x.mean for _, x in mine]
        ys = [p.harmful_refusal.mean for p, _ in mine]
        xerr = [[x.mean - x.lo for _, x in mine], [x.hi - x.mean for _, x in mine]]
        yerr = [[p.harmful_refusal.mean - p.harmful_refusal.lo for p, _ in mine]]
        yerr.append([p.harmful_refusal.hi - p.harmful_refusal.mean for p, _ in mine])
        label = family if len(family) <= 40 else family[:37] + "..."
        ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, marker="o", capsize=3, linewidth=1, label=label)
        for (p, x), y in zip(mine, ys, strict=True):
            if p.alpha is not None:
                ax.annotate(
                    f"{p.alpha:g}", (x.mean, y), textcoords="offset points", xytext=(4, 4), fontsize=7
                )
    front = sorted(((p, x) for p, x in placed if p.pareto), key=lambda px: px[1].mean)
    if front:
        ax.plot(
            [x.mean for _, x in front],
            [p.harmful_refusal.mean for p, _ in front],
            linestyle="--",
            color="black",
            linewidth=1,
            label="Pareto front",
        )
    ax.set_xlabel(axis_label(axis, points))
    ax.set_ylabel("harmful refusal (worst condition)")
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
