"""The frontier's plain functions on summaries written here: grid expansion, point extraction
(worst cells, capability metric named by the summary), the Pareto front, the selection rule and
the plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from safegap.errors import UserError
from safegap.eval.frontier import (
    Estimate,
    GridEntry,
    Point,
    default_axis,
    expand_grid,
    frontier_json,
    frontier_points,
    pareto_front,
    parse_alphas,
    plot_frontier,
    select,
)


def test_expand_grid_sets_each_defense_strength_and_keeps_none_first() -> None:
    grid = expand_grid(
        [
            "cmrm:s.safetensors,layers=1",
            "refusal_direction:organism:calibration",
            "ecso",
            "vlm_guard:x,alpha=0.5",
        ],
        [0.5, 1.0],
    )
    assert [e.spec for e in grid] == [
        "none",
        "cmrm:s.safetensors,layers=1,alpha=0.5",
        "cmrm:s.safetensors,layers=1,alpha=1",
        "refusal_direction:organism:calibration,strength=0.5",
        "refusal_direction:organism:calibration,strength=1",
        "ecso",
        "vlm_guard:x,alpha=0.5",
    ]
    assert grid[1].family == "cmrm:s.safetensors,layers=1" and grid[1].alpha == 0.5
    assert grid[5].alpha is None and grid[6].alpha == 0.5
    composite = expand_grid(["system_prompt+cmrm_sample"], [2.0], known=["system_prompt", "cmrm_sample"])
    assert composite[1].spec == "system_prompt+cmrm_sample:alpha=2"
    assert [e.spec for e in expand_grid(["none", "none"], [1.0])] == ["none"]


def test_parse_alphas() -> None:
    assert parse_alphas("0.25, 0.5,1,0.5") == [0.25, 0.5, 1.0]
    for bad, message in (("0.5,x", "'x' is not a number"), ("nan", "not finite"), (",", "no values")):
        with pytest.raises(UserError, match=message):
            parse_alphas(bad)


def _cell(mean: float, half: float = 0.05) -> dict[str, Any]:
    return {"mean": mean, "ci": [mean - half, mean + half]}


def _row(bench: str, cond: str, defense: str, **metrics: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "benchmark": bench,
        "condition": cond,
        "defense": defense,
        "judge": "refusal",
        "category": "all",
    }
    for key, value in metrics.items():
        row[key] = _cell(value) if isinstance(value, float) else value
    return row


def _summary(with_capability: bool) -> dict[str, Any]:
    rows = []
    # defense -> (refusal text, refusal image, over-refusal text, over-refusal image, vqa accuracy)
    table = {
        "none": (0.9, 0.3, 0.05, 0.10, 0.80),
        "cmrm:s,alpha=0.5": (0.9, 0.6, 0.05, 0.12, 0.79),
        "cmrm:s,alpha=1": (0.95, 0.8, 0.10, 0.30, 0.70),
        "ecso": (0.9, 0.5, 0.05, 0.11, 0.81),
    }
    for defense, (rt, ri, ot, oi, acc) in table.items():
        rows.append(_row("organism", "text", defense, defense_success_rate=rt, over_refusal=ot))
        rows.append(_row("organism", "benign_image", defense, defense_success_rate=ri, over_refusal=oi))
        extra: dict[str, Any] = (
            {"capability_metric": "exact_match", "exact_match": acc} if with_capability else {}
        )
        rows.append(
            _row(
                "organism_vqa", "benign_image", defense, defense_success_rate=None, over_refusal=0.0, **extra
            )
        )
        rows.append({**rows[-1], "category": "colour"})  # categories are ignored
    out: dict[str, Any] = {"metrics": rows, "run": {"judge_ids": ["refusal"]}}
    if with_capability:
        out["capability"] = {
            "organism_vqa": {"scorer": "exact_match", "metric": "exact_match", "chance": 0.25}
        }
    return out


GRID = [
    GridEntry("none", "none", None),
    GridEntry("cmrm:s,alpha=0.5", "cmrm:s", 0.5),
    GridEntry("cmrm:s,alpha=1", "cmrm:s", 1.0),
    GridEntry("ecso", "ecso", None),
]


def test_points_take_the_worst_cell_and_name_the_capability_metric() -> None:
    points = frontier_points(_summary(True), GRID, ["organism"], ["organism_vqa"])
    none = points[0]
    assert none.harmful_refusal.mean == 0.3 and none.harmful_refusal.cell == "organism:benign_image"
    assert none.harmful_refusal.lo == pytest.approx(0.25)
    assert none.over_refusal is not None and none.over_refusal.mean == 0.10
    assert none.capability is not None and none.capability.mean == 0.80
    assert none.capability_metric == "exact_match"
    assert default_axis(points) == "capability"
    # without a capability metric in the summary, x falls back to worst-condition over-refusal
    plain = frontier_points(_summary(False), GRID, ["organism"], ["organism_vqa"])
    assert all(p.capability is None for p in plain) and default_axis(plain) == "over_refusal"
    with pytest.raises(UserError, match="no results for defense 'cmrm:s,alpha=2'"):
        frontier_points(_summary(True), [GridEntry("cmrm:s,alpha=2", "cmrm:s", 2.0)], ["organism"], [])
    with pytest.raises(UserError, match="no judge 'guard'"):
        frontier_points(_summary(True), GRID, ["organism"], [], judge="guard")


def test_pareto_front_on_both_axes() -> None:
    points = frontier_points(_summary(True), GRID, ["organism"], ["organism_vqa"])
    on_cap = {p.defense for p in pareto_front(points, "capability") if p.pareto}
    # ecso has the best accuracy, cmrm alpha=1 the best refusal, alpha=0.5 sits between;
    # none is dominated by ecso (more accurate and safer)
    assert on_cap == {"ecso", "cmrm:s,alpha=0.5", "cmrm:s,alpha=1"}
    on_over = {p.defense for p in pareto_front(points, "over_refusal") if p.pareto}
    # lower over-refusal is better: each step to more refusal costs more over-refusal, so no
    # point beats another on both axes
    assert on_over == {"none", "ecso", "cmrm:s,alpha=0.5", "cmrm:s,alpha=1"}
    one = Point("a", "a", None, Estimate(0.5, 0.4, 0.6), None, None)
    assert not pareto_front([one], "capability")[0].pareto  # no x value: never on the front


def test_selection_rule_respects_both_bounds() -> None:
    points = frontier_points(_summary(True), GRID, ["organism"], ["organism_vqa"])
    pick = select(points, family="cmrm:s")
    # alpha=1 recovers most but loses 0.10 accuracy and raises over-refusal by 0.20: rejected
    assert pick.chosen.defense == "cmrm:s,alpha=0.5"
    assert pick.recovery == pytest.approx(0.3) and pick.capability_loss == pytest.approx(0.01)
    assert "capability loss 0.100 > 0.02" in pick.rejected["cmrm:s,alpha=1"]
    assert select(points, max_capability_loss=0.2, family="cmrm:s").chosen.defense == "cmrm:s,alpha=0.5"
    loose = select(points, max_capability_loss=0.2, max_over_refusal_rise=0.5, family="cmrm:s")
    assert loose.chosen.defense == "cmrm:s,alpha=1"
    # too tight a bound: none (recovery 0) is the answer
    assert (
        select(points, max_capability_loss=0.0, max_over_refusal_rise=0.0, family="cmrm:s").chosen.defense
        == "none"
    )
    # over every defense, ecso gains accuracy: loss is negative, recovery 0.2 < cmrm's 0.3
    assert select(points).chosen.defense == "cmrm:s,alpha=0.5"
    with pytest.raises(UserError, match="no 'none' point"):
        select(points[1:])


def test_json_and_plot(tmp_path: Path) -> None:
    points = pareto_front(frontier_points(_summary(True), GRID, ["organism"], ["organism_vqa"]), "capability")
    data = frontier_json(points, "capability", {"cmrm:s": select(points, family="cmrm:s")}, {"model": "m"})
    assert data["x"]["label"].startswith("capability: exact_match") and data["x"]["higher_is_better"]
    first = data["points"][0]
    assert first["x"] == {"mean": 0.8, "ci": [0.75, 0.8500000000000001], "cell": "organism_vqa:benign_image"}
    assert first["y"]["mean"] == 0.3 and first["pareto"] is False
    assert data["selection"]["cmrm:s"]["chosen"] == "cmrm:s,alpha=0.5"
    png = tmp_path / "frontier.png"
    plot_frontier(points, "capability", png, title="test")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_capability_is_read_at_the_benchmark_own_conditions() -> None:
    summary = _summary(True)
    summary["metrics"].append(
        _row(
            "organism_vqa",
            "text",
            "none",
            capability_metric="exact_match",
            exact_match=0.25,
            over_refusal=0.0,
        )
    )
    every = frontier_points(summary, GRID[:1], ["organism"], ["organism_vqa"])[0]
    assert every.capability is not None and every.capability.cell == "organism_vqa:text"
    own = frontier_points(
        summary,
        GRID[:1],
        ["organism"],
        ["organism_vqa"],
        capability_conditions={"organism_vqa": ["benign_image"]},
    )[0]
    assert own.capability is not None and own.capability.mean == 0.80
