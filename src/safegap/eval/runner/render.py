"""Result tables of a run's ``summary.json`` for the terminal."""

from __future__ import annotations

from typing import Any

from rich.table import Table


def _fmt(estimate: dict[str, Any] | None) -> str:
    if not estimate:
        return "-"
    lo, hi = estimate["ci"]
    return f"{estimate['mean']:.2f} [{lo:.2f},{hi:.2f}]"


def results_table(summary: dict[str, Any], out: str) -> Table:
    """The overall rows of ``summary``. A benchmark or judge column is shown only when the run has
    several (else it is in the title); defense specs show file arguments by name when those names
    tell the defenses apart. In a narrow terminal, ids and estimates wrap, never cut to "..."."""
    from safegap.report.plots import display_spec

    rows = [r for r in summary["metrics"] if r["category"] == "all"]
    benches = list(dict.fromkeys(r["benchmark"] for r in rows))
    judges = list(dict.fromkeys(r["judge"] for r in rows))
    specs = list(dict.fromkeys(r["defense"] for r in rows))
    short = {d: display_spec(d) for d in specs}
    if len(set(short.values())) < len(specs):
        short = {d: d for d in specs}
    fixed = [f"benchmark {benches[0]}"] * (len(benches) == 1) + [f"judge {judges[0]}"] * (len(judges) == 1)
    table = Table(title=f"{out}: {', '.join([*fixed, 'category all'])}")
    columns = ["benchmark"] * (len(benches) > 1) + ["condition", "defense"] + ["judge"] * (len(judges) > 1)
    for column in columns:
        table.add_column(column, overflow="fold")
    for column in ("n", "errors"):
        table.add_column(column, no_wrap=True, justify="right")
    for column in ("unsafe rate", "refusal rate", "over-refusal"):
        table.add_column(column, overflow="fold")
    for row in rows:
        ids = {"benchmark": row["benchmark"], "condition": row["condition"], "defense": short[row["defense"]]}
        ids["judge"] = row["judge"]
        table.add_row(
            *(ids[c] for c in columns),
            str(row["n"]),
            str(row["errors"]),
            _fmt(row["unsafe_rate"]),
            _fmt(row["refusal_rate"]),
            _fmt(row["over_refusal"]),
        )
    return table
