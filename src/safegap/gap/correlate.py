"""Correlation between a gap metric and the unsafe rate across (model or checkpoint, condition)
results: Pearson and Spearman (scipy) with percentile-bootstrap 95% intervals over the points.

A RESULT is ``GAP_JSON`` (holding both numbers) or ``GAP_JSON:UNSAFE`` where ``UNSAFE`` is a number
or a JSON file holding the unsafe rate. Numbers are found by dotted key paths (``mir.total``);
when the path is absent, a unique key of that final name anywhere in the file is used.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class CorrelationPoint:
    label: str
    metric: float
    unsafe_rate: float
    source: str


def _find_all(obj: Any, key: str, path: str = "") -> list[tuple[str, Any]]:
    hits: list[tuple[str, Any]] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            here = f"{path}.{k}" if path else str(k)
            if k == key:
                hits.append((here, v))
            hits.extend(_find_all(v, key, here))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            hits.extend(_find_all(v, key, f"{path}[{i}]"))
    return hits


def lookup(obj: Any, dotted: str, where: str) -> float:
    """The number at ``dotted`` in ``obj``, else the unique key named like its last part."""
    node = obj
    for part in dotted.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        else:
            node = None
            break
    if node is None:
        hits = [(p, v) for p, v in _find_all(obj, dotted.split(".")[-1]) if isinstance(v, int | float)]
        if len(hits) != 1:
            detail = "not found" if not hits else f"ambiguous ({', '.join(p for p, _ in hits[:4])})"
            raise ValueError(f"{where}: key {dotted!r} {detail}")
        node = hits[0][1]
    if isinstance(node, bool) or not isinstance(node, int | float) or not math.isfinite(float(node)):
        raise ValueError(f"{where}: {dotted!r} is not a finite number ({node!r})")
    return float(node)


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"result file {str(path)!r} not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path.name}: not valid JSON ({exc.msg})") from exc


def _label(data: Any, path: Path) -> str:
    if isinstance(data, dict):
        if isinstance(data.get("label"), str):
            return str(data["label"])
        model = data.get("model")
        if isinstance(model, dict) and model.get("name_or_path"):
            condition = data.get("condition")
            return f"{Path(str(model['name_or_path'])).name}" + (f" [{condition}]" if condition else "")
    return path.stem


def load_point(arg: str, metric_key: str = "mir.total", unsafe_key: str = "unsafe_rate") -> CorrelationPoint:
    """Parse one RESULT argument (see module docstring)."""
    gap_part, sep, unsafe_part = arg.partition(":")
    gap_path = Path(gap_part)
    data = _read_json(gap_path)
    metric = lookup(data, metric_key, gap_path.name)
    if not sep:
        unsafe = lookup(data, unsafe_key, gap_path.name)
    else:
        try:
            unsafe = float(unsafe_part)
        except ValueError:
            unsafe_path = Path(unsafe_part)
            unsafe = lookup(_read_json(unsafe_path), unsafe_key, unsafe_path.name)
    if not math.isfinite(unsafe):
        raise ValueError(f"{arg}: unsafe rate is not finite")
    return CorrelationPoint(_label(data, gap_path), metric, unsafe, arg)


@dataclass(frozen=True)
class Coefficient:
    r: float
    p_value: float
    ci: tuple[float, float]
    valid_resamples: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "r": self.r,
            "p_value": self.p_value,
            "ci": list(self.ci),
            "valid_resamples": self.valid_resamples,
        }


@dataclass(frozen=True)
class Correlation:
    pearson: Coefficient
    spearman: Coefficient
    n: int
    points: list[CorrelationPoint]
    metric_key: str
    unsafe_key: str
    n_boot: int
    level: float
    seed: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "metric_key": self.metric_key,
            "unsafe_key": self.unsafe_key,
            "pearson": self.pearson.as_dict(),
            "spearman": self.spearman.as_dict(),
            "bootstrap": {
                "n_boot": self.n_boot,
                "level": self.level,
                "seed": self.seed,
                "method": "percentile, resampling points with replacement",
            },
            "points": [asdict(p) for p in self.points],
        }


def _coefficient(
    x: np.ndarray, y: np.ndarray, kind: str, n_boot: int, level: float, rng: np.random.Generator
) -> Coefficient:
    fn = stats.pearsonr if kind == "pearson" else stats.spearmanr
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return Coefficient(math.nan, math.nan, (math.nan, math.nan), 0)
    result = fn(x, y)
    r, p = float(result[0]), float(result[1])
    boots = []
    index = rng.integers(0, x.size, size=(n_boot, x.size))
    for rows in index:
        bx, by = x[rows], y[rows]
        if np.ptp(bx) == 0 or np.ptp(by) == 0:
            continue  # a resample with a constant side has no correlation
        value = float(fn(bx, by)[0])
        if math.isfinite(value):
            boots.append(value)
    tail = (1 - level) / 2 * 100
    ci = tuple(float(v) for v in np.percentile(boots, [tail, 100 - tail])) if boots else (math.nan, math.nan)
    return Coefficient(r, p, (ci[0], ci[1]), len(boots))


def correlate(
    points: Sequence[CorrelationPoint],
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
    metric_key: str = "mir.total",
    unsafe_key: str = "unsafe_rate",
) -> Correlation:
    """Pearson and Spearman between ``metric`` and ``unsafe_rate`` over at least three points."""
    if len(points) < 3:
        raise ValueError(f"correlation needs at least 3 results, got {len(points)}")
    x = np.array([p.metric for p in points], dtype=np.float64)
    y = np.array([p.unsafe_rate for p in points], dtype=np.float64)
    return Correlation(
        pearson=_coefficient(x, y, "pearson", n_boot, level, np.random.default_rng(seed)),
        spearman=_coefficient(x, y, "spearman", n_boot, level, np.random.default_rng(seed)),
        n=len(points),
        points=list(points),
        metric_key=metric_key,
        unsafe_key=unsafe_key,
        n_boot=n_boot,
        level=level,
        seed=seed,
    )
