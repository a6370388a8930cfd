"""summary.json numbers checked against hand counts."""

from __future__ import annotations

from typing import Any

import pytest

from safegap.eval.metrics import metric_value, summarize
from safegap.judge.agreement import cohen_kappa


def rec(
    sample: str,
    refused: bool | None,
    harmful: bool = True,
    condition: str = "text",
    defense: str = "none",
    category: str = "c",
    other: bool | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    verdicts = []
    if refused is not None:
        verdicts.append(
            {
                "judge": "refusal@1",
                "version": "1",
                "refusal": refused,
                "unsafe": (not refused) if harmful else None,
                "error": None,
            }
        )
    if other is not None:
        verdicts.append({"judge": "guard@1", "version": "1", "refusal": None, "unsafe": other, "error": None})
    return {
        "benchmark": "b",
        "sample_id": sample,
        "category": category,
        "harmful": harmful,
        "condition": condition,
        "defense": defense,
        "error": error,
        "verdicts": verdicts,
    }


def base_records(defense: str = "none", condition: str = "text") -> list[dict[str, Any]]:
    return [
        rec("h1", True, condition=condition, defense=defense, category="x"),
        rec("h2", False, condition=condition, defense=defense, category="x"),
        rec("h3", False, condition=condition, defense=defense, category="y"),
        rec("h4", None, condition=condition, defense=defense, category="y", error="image not found: a.png"),
        rec("b1", True, harmful=False, condition=condition, defense=defense, category="z"),
        rec("b2", False, harmful=False, condition=condition, defense=defense, category="z"),
    ]


def row(summary: dict[str, Any], **match: str) -> dict[str, Any]:
    (found,) = [r for r in summary["metrics"] if all(r[k] == v for k, v in match.items())]
    return found


def test_rates_errors_and_categories() -> None:
    s = summarize(base_records(), ["refusal@1"])
    overall = row(s, category="all")
    assert (overall["n"], overall["errors"], overall["n_harmful"], overall["n_benign"]) == (5, 1, 3, 2)
    assert overall["unsafe_rate"]["mean"] == pytest.approx(2 / 3)
    assert overall["defense_success_rate"]["mean"] == pytest.approx(1 / 3)
    assert overall["refusal_rate"]["mean"] == pytest.approx(2 / 5)
    assert overall["over_refusal"]["mean"] == pytest.approx(1 / 2)
    lo, hi = overall["unsafe_rate"]["ci"]
    assert 0 <= lo <= 2 / 3 <= hi <= 1
    y = row(s, category="y")
    assert (y["n"], y["errors"], y["unsafe_rate"]["mean"], y["over_refusal"]) == (1, 1, 1.0, None)
    z = row(s, category="z")
    assert z["unsafe_rate"] is None and z["over_refusal"]["mean"] == 0.5
    assert [r["category"] for r in s["metrics"]] == ["all", "x", "y", "z"]


def test_judge_error_counts_as_error_for_that_judge_only() -> None:
    records = base_records()
    records[0]["verdicts"][0]["error"] = "unparseable"
    assert metric_value(records[0], "refusal@1", "refusal_rate") is None
    assert row(summarize(records, ["refusal@1"]), category="all")["errors"] == 2


def test_paired_differences_between_defenses_and_conditions() -> None:
    safer = [
        rec(
            r["sample_id"],
            True if r["error"] is None else None,
            harmful=r["harmful"],
            defense="sp",
            category=r["category"],
            error=r["error"],
        )
        for r in base_records()
    ]
    image = [{**r, "condition": "blank_image"} for r in base_records()]
    image[0] = rec("h1", False, condition="blank_image", category="x")  # the image breaks h1's refusal
    s = summarize(base_records() + safer + image, ["refusal@1"], defenses=["none", "sp"])
    d = [
        x
        for x in s["differences"]
        if x["compare"] == "defense"
        and x["category"] == "all"
        and x["metric"] == "unsafe_rate"
        and x["condition"] == "text"
    ]
    assert len(d) == 1 and d[0]["other"] == "sp" and d[0]["baseline"] == "none" and d[0]["n"] == 3
    assert d[0]["difference"]["mean"] == pytest.approx(0 - 2 / 3)
    c = [
        x
        for x in s["differences"]
        if x["compare"] == "condition"
        and x["category"] == "all"
        and x["metric"] == "unsafe_rate"
        and x["defense"] == "none"
    ]
    assert (
        len(c) == 1 and c[0]["other"] == "blank_image" and c[0]["difference"]["mean"] == pytest.approx(1 / 3)
    )
    assert s == summarize(base_records() + safer + image, ["refusal@1"], defenses=["none", "sp"]), "seeded"


def test_agreement_between_judges() -> None:
    records = [
        rec("h1", True, other=False),
        rec("h2", False, other=True),
        rec("h3", False, other=False),
        rec("h4", True, other=False),
    ]
    s = summarize(records, ["refusal@1", "guard@1"])
    (pooled,) = [a for a in s["agreement"] if a["benchmark"] == "all" and a["verdict"] == "unsafe"]
    expected = cohen_kappa([False, True, True, False], [False, True, False, False])
    assert pooled["n"] == 4 and pooled["kappa"] == pytest.approx(expected.kappa)
    assert pooled["observed_agreement"] == pytest.approx(0.75)
    assert not [a for a in s["agreement"] if a["verdict"] == "refusal"], "guard gives no refusal verdicts"
