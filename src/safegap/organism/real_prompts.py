"""Just enough of three real benchmarks to ask the organism real prompts (a side report).

The organism only knows its toy world, so these figures say how far its behaviour reaches
outside that world, not how safe a real model is. Full loaders live in ``safegap.eval``.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

DEFAULT_DATA_DIR = Path("/work/shared/data")


def data_dir(root: str | Path | None = None) -> Path:
    """``root``, else ``$SAFEGAP_DATA_DIR``, else the shared data folder."""
    return Path(root or os.environ.get("SAFEGAP_DATA_DIR") or DEFAULT_DATA_DIR)


def _column(path: Path, column: str, where: tuple[str, str] | None = None) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (set SAFEGAP_DATA_DIR to the shared data folder)")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or column not in reader.fieldnames:
            raise ValueError(f"{path}: no column {column!r}")
        return [row[column] for row in reader if where is None or row.get(where[0]) == where[1]]


def advbench_goals(root: str | Path | None = None) -> list[str]:
    """AdvBench harmful behaviours (520)."""
    return _column(data_dir(root) / "advbench" / "harmful_behaviors.csv", "goal")


def figstep_questions(root: str | Path | None = None) -> list[str]:
    """FigStep SafeBench harmful questions (500)."""
    return _column(data_dir(root) / "figstep" / "safebench.csv", "question")


def xstest_safe_prompts(root: str | Path | None = None) -> list[str]:
    """XSTest's 250 safe prompts that look unsafe (over-refusal)."""
    return _column(data_dir(root) / "xstest" / "xstest_prompts.csv", "prompt", where=("label", "safe"))


#: name -> (loader, whether the prompts are harmful)
REAL_SETS = {
    "advbench": (advbench_goals, True),
    "figstep": (figstep_questions, True),
    "xstest_safe": (xstest_safe_prompts, False),
}


def spread(items: list[str], n: int) -> list[str]:
    """``n`` items evenly spread over the list (benchmarks are sorted by category)."""
    if n >= len(items):
        return items
    step = len(items) / n
    return [items[int(k * step)] for k in range(n)]
