"""Gap vs unsafe-rate correlation: statistics against scipy, intervals, and RESULT parsing."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from scipy import stats

from safegap.gap.correlate import CorrelationPoint, correlate, load_point


def points(xs: list[float], ys: list[float]) -> list[CorrelationPoint]:
    return [CorrelationPoint(f"p{i}", x, y, "test") for i, (x, y) in enumerate(zip(xs, ys, strict=True))]


def test_matches_scipy_and_brackets_the_estimate() -> None:
    xs = [0.1, 0.5, 0.9, 1.3, 1.2, 2.0, 2.4, 3.1]
    ys = [0.05, 0.2, 0.1, 0.4, 0.5, 0.45, 0.7, 0.8]
    result = correlate(points(xs, ys), n_boot=500)
    assert math.isclose(result.pearson.r, stats.pearsonr(xs, ys)[0], rel_tol=1e-12)
    assert math.isclose(result.spearman.r, stats.spearmanr(xs, ys)[0], rel_tol=1e-12)
    for c in (result.pearson, result.spearman):
        assert c.ci[0] <= c.r <= c.ci[1] and c.valid_resamples > 400
    again = correlate(points(xs, ys), n_boot=500)
    assert again.pearson.ci == result.pearson.ci  # seeded


def test_monotone_but_not_linear() -> None:
    xs = [1, 2, 3, 4, 5, 6]
    result = correlate(points(xs, [x**4 for x in xs]), n_boot=200)
    assert result.spearman.r == pytest.approx(1.0) and result.pearson.r < 0.99


def test_constant_side_and_too_few_points() -> None:
    flat = correlate(points([1, 2, 3], [0.5, 0.5, 0.5]), n_boot=100)
    assert math.isnan(flat.pearson.r) and flat.pearson.valid_resamples == 0
    with pytest.raises(ValueError, match="at least 3"):
        correlate(points([1, 2], [1, 2]))


def test_result_arguments(tmp_path: Path) -> None:
    gap = tmp_path / "g.json"
    gap.write_text(
        json.dumps(
            {
                "model": {"name_or_path": "/ck/step100"},
                "mir": {"total": 1.5},
                "eval": {"summary": {"unsafe_rate": 0.3}},
            }
        )
    )
    both = load_point(str(gap))
    assert (both.metric, both.unsafe_rate, both.label) == (1.5, 0.3, "step100")
    assert load_point(f"{gap}:0.7").unsafe_rate == 0.7
    unsafe = tmp_path / "u.json"
    unsafe.write_text(json.dumps({"unsafe_rate": 0.9}))
    assert load_point(f"{gap}:{unsafe}").unsafe_rate == 0.9
    assert load_point(str(gap), metric_key="mir.total").metric == 1.5
    ambiguous = tmp_path / "a.json"
    ambiguous.write_text(json.dumps({"mir": {"total": 1}, "x": {"unsafe_rate": 1}, "y": {"unsafe_rate": 2}}))
    with pytest.raises(ValueError, match="ambiguous"):
        load_point(str(ambiguous))
    with pytest.raises(ValueError, match="'nope' not found"):
        load_point(str(gap), metric_key="nope")
    with pytest.raises(FileNotFoundError):
        load_point(str(tmp_path / "missing.json"))


def test_plots_write_pngs(tmp_path: Path) -> None:
    from safegap.gap import plots

    out = plots.plot_layer_curves(
        [0, 1, 2],
        {"image": [[1, 2, 3], [2, 3, 4]], "text_filler": [[0.5, 0.4, 0.3]]},
        tmp_path / "curves.png",
        "FD",
    )
    assert out.stat().st_size > 1000
    scatter = plots.plot_correlation(
        [
            {"label": "a", "metric": 1.0, "unsafe_rate": 0.2},
            {"label": "b", "metric": 2.0, "unsafe_rate": 0.4},
        ],
        tmp_path / "s.png",
        "MIR",
    )
    assert scatter.stat().st_size > 1000
