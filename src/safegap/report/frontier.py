"""The frontier section of the report: ``safegap frontier``'s plot and points table."""

from __future__ import annotations

import json
from pathlib import Path

from safegap.report.markup import Row, e, fmt_estimate


def _cell(value: Row | None) -> str:
    return "-" if not value else fmt_estimate(value)


def frontier_section(data: Row, png: bytes | None) -> str:
    """The safety-utility frontier of ``safegap frontier`` (``frontier.json`` and its plot): the
    plot, then one row per point, Pareto-front points flagged and the rule's choice marked."""
    import base64

    chosen = ((data.get("selection") or {}).get("all") or {}).get("chosen")
    x = data.get("x") or {}
    rows = []
    for p in data.get("points", []):
        marks = [m for m, on in (("pareto", p.get("pareto")), ("chosen", p["defense"] == chosen)) if on]
        rows.append(
            (
                marks,
                [
                    e(p["defense"]),
                    e("-" if p.get("alpha") is None else f"{p['alpha']:g}"),
                    _cell(p.get("harmful_refusal")),
                    _cell(p.get("over_refusal")),
                    _cell(p.get("capability")),
                    e("yes" if p.get("pareto") else ""),
                    e("chosen" if p["defense"] == chosen else ""),
                ],
            )
        )
    head = ["defense", "alpha", "harmful refusal", "over-refusal", "capability", "Pareto front", "rule"]
    body = "".join(
        f'<tr class="{" ".join(marks)}">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"
        for marks, cells in rows
    )
    parts = ['<section id="frontier"><h2>Safety-utility frontier</h2>']
    parts.append(
        f"<p class='muted'>x: {e(x.get('label', ''))}; y: harmful refusal (worst condition). "
        f"Chosen by the rule in frontier.json: <b>{e(chosen or '-')}</b>.</p>"
    )
    if png:
        b64 = base64.b64encode(png).decode("ascii")
        parts.append(
            f'<img class="plot" id="frontier-plot" alt="frontier" src="data:image/png;base64,{b64}">'
        )
    parts.append(
        '<table class="frontier"><tr>' + "".join(f"<th>{e(h)}</th>" for h in head) + f"</tr>{body}</table>"
    )
    return "".join(parts) + "</section>"


def find_frontier(run_dir: Path) -> tuple[Row, bytes | None] | None:
    """``frontier.json`` (and ``frontier.png``) beside a run or one folder up (``safegap frontier``
    writes them to OUT and the run to OUT/run), or None."""
    for folder in (run_dir, run_dir.parent):
        path = folder / "frontier.json"
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except ValueError as exc:
                raise ValueError(f"{path}: not valid JSON ({exc})") from exc
            png = folder / "frontier.png"
            return data, png.read_bytes() if png.is_file() else None
    return None
