"""The HTML pieces every report section is written with: escaping, estimates, tables."""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Sequence
from typing import Any

Row = dict[str, Any]


def e(value: Any) -> str:
    """HTML-escape anything (None shows as an empty string)."""
    return "" if value is None else html.escape(str(value), quote=True)


def slug(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_-]+", "-", text).strip("-") or "x"


def fmt_estimate(est: dict[str, Any] | None) -> str:
    if not est:
        return '<span class="muted">-</span>'
    lo, hi = est["ci"]
    return f'{est["mean"]:.3f} <span class="ci">[{lo:.3f}, {hi:.3f}]</span>'


def table(
    headers: Sequence[str], rows: Iterable[Sequence[str]], numeric: set[int] | None = None, attrs: str = ""
) -> str:
    """An HTML table; cells are already-escaped HTML fragments."""
    numeric = numeric or set()
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table {attrs}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
