"""Result tables of a run's ``summary.json`` for the terminal.

Numbers never break across lines: estimates are ``MEAN [LO,HI]`` in columns that do not wrap;
when the terminal is too narrow for that, the interval goes on a second line of its cell (still
whole) and ids (condition, defense...) fold instead.
"""

from __future__ import annotations

from typing import Any

from rich import box
from rich.table import Table

#: Columns of ids keep at least this many characters (fewer when every id is shorter).
ID_WIDTH = 12
#: (summary key, column header) of the estimate columns.
ESTIMATES = (
    ("unsafe_rate", "unsafe rate"),
    ("refusal_rate", "refusal rate"),
    ("over_refusal", "over-refusal"),
)


def format_estimate(estimate: dict[str, Any] | None, split: bool = False) -> str:
    """``0.46 [0.34,0.56]`` (``split``: the interval on a second line); ``-`` for no estimate."""
    if not estimate:
        return "-"
    lo, hi = estimate["ci"]
    return f"{estimate['mean']:.2f}{chr(10) if split else ' '}[{lo:.2f},{hi:.2f}]"


def results_table(summary: dict[str, Any], out: str, width: int | None = None) -> Table:
    """The overall rows of ``summary``. A benchmark or judge column is shown only when the run has
    several (else it is in the title); defense specs show file arguments by name when those names
    tell the defenses apart. In a terminal ``width`` columns wide, ids fold (never cut to
    "...") and numbers stay whole (see the module docstring)."""
    table = _table(summary, out, split=False, id_width=ID_WIDTH)
    if width is None:
        return table
    for split, id_width in ((False, ID_WIDTH), *((True, w) for w in range(ID_WIDTH, 3, -2))):
        table = _table(summary, out, split, id_width)
        if _least_width(table) <= width:
            break
    return table


def _least_width(table: Table) -> int:
    """Characters the table needs at least: whole cells in no-wrap columns, ``min_width`` in
    folding ones, and two between columns (a space of padding and the box's blank separator)."""
    total = -2
    for column in table.columns:
        lines = [column.header, *column.cells] if column.no_wrap else []
        widest = max((len(line) for cell in lines for line in str(cell).splitlines()), default=0)
        total += (widest if lines else column.min_width or 1) + 2
    return total


def _table(summary: dict[str, Any], out: str, split: bool, id_width: int) -> Table:
    from safegap.report.plots import display_spec

    rows = [r for r in summary["metrics"] if r["category"] == "all"]
    benches = list(dict.fromkeys(r["benchmark"] for r in rows))
    judges = list(dict.fromkeys(r["judge"] for r in rows))
    specs = list(dict.fromkeys(r["defense"] for r in rows))
    short = {d: display_spec(d) for d in specs}
    if len(set(short.values())) < len(specs):
        short = {d: d for d in specs}
    fixed = [f"benchmark {benches[0]}"] * (len(benches) == 1) + [f"judge {judges[0]}"] * (len(judges) == 1)
    table = Table(
        title=f"{out}: {', '.join([*fixed, 'category all'])}",
        caption="rate [95% CI]" if rows else None,
        box=box.SIMPLE_HEAD,
        show_edge=False,
        padding=(0, 1, 0, 0),
        pad_edge=False,
    )
    columns = ["benchmark"] * (len(benches) > 1) + ["condition", "defense"] + ["judge"] * (len(judges) > 1)
    values = {c: [*(str(r.get(c)) for r in rows), c] for c in ("benchmark", "condition", "judge")}
    values["defense"] = [*short.values(), "defense"]
    for column in columns:  # ids fold, but not below a readable width (up to ID_WIDTH)
        table.add_column(column, overflow="fold", min_width=min(id_width, max(map(len, values[column]))))
    for column in ("n", "errors"):
        table.add_column(column, no_wrap=True, justify="right")
    for _, header in ESTIMATES:  # narrow: the header on two lines too ("unsafe" / "rate")
        table.add_column(header.replace(" ", "\n").replace("-", "-\n") if split else header, no_wrap=True)
    # Capability benchmarks: their metric (e.g. accuracy), chance in the header when one.
    capability = list(dict.fromkeys(r["capability_metric"] for r in rows if r.get("capability_metric")))
    if capability:
        chances = {r.get("chance") for r in rows if r.get("capability_metric")}
        chance = f" (chance {next(iter(chances)):.2f})" if len(chances) == 1 and None not in chances else ""
        table.add_column("/".join(capability) + chance, no_wrap=True)
    for row in rows:
        ids = {"benchmark": row["benchmark"], "condition": row["condition"], "defense": short[row["defense"]]}
        ids["judge"] = row["judge"]
        table.add_row(
            *(ids[c] for c in columns),
            str(row["n"]),
            str(row["errors"]),
            *(format_estimate(row[key], split) for key, _ in ESTIMATES),
            *([format_estimate(row.get(row.get("capability_metric") or ""), split)] if capability else []),
        )
    return table
