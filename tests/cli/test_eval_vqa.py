"""``safegap eval --bench organism_vqa`` on a scaled-down organism, through the command line:
summary.json reports ``accuracy`` ``{"mean", "ci"}`` per condition and defense, with chance, and
the paired differences against ``none``.

The scaled organism of the tests (``--scale 0.04``) replies "." to every question (measured), so
nothing here asserts it beats chance: that is asserted on a fixed fake captioner in
tests/organism/test_vqa.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from safegap.cli.main import app

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytestmark = pytest.mark.slow

CONDITIONS = ("image", "blank_image")
DEFENSES = ("none", "system_prompt")


def invoke(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_eval_organism_vqa_reports_accuracy_per_condition_and_defense(tmp_path: Path) -> None:
    import torch

    torch.set_num_threads(1)
    organism = tmp_path / "organism"
    invoke(
        "organism", "build", "--out", str(organism), "--seed", "0", "--scale", "0.04", "--threads", "1",
        "--cache-dir", str(tmp_path / "cache"),
    )  # fmt: skip
    out = tmp_path / "run"
    output = invoke(
        "eval", "--model", str(organism), "--bench", "organism_vqa:n=1", "--condition", ",".join(CONDITIONS),
        "--defense", ",".join(DEFENSES), "--max-new-tokens", "8", "--batch-size", "32", "--out", str(out),
    )  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    n = 34 + 3 * 8  # one image per object, 8 scenes per scene question (n=1)
    chance = summary["capability"]["organism_vqa:n=1"]["chance"]
    assert summary["capability"]["organism_vqa:n=1"]["metric"] == "accuracy"
    assert chance == pytest.approx((34 / 34 + 8 / 8 + 8 / 8 + 8 / 2) / n)  # mean of 1/#candidates
    cells = {(r["condition"], r["defense"]): r for r in summary["metrics"] if r["category"] == "all"}
    assert set(cells) == {(c, d) for c in CONDITIONS for d in DEFENSES}
    for row in cells.values():
        assert row["capability_metric"] == "accuracy" and row["chance"] == pytest.approx(chance)
        assert set(row["accuracy"]) == {"mean", "ci"}
        assert row["n_scored"] == row["n"] and row["n"] + row["errors"] == n
        assert 0.0 <= row["accuracy"]["ci"][0] <= row["accuracy"]["mean"] <= row["accuracy"]["ci"][1] <= 1.0
        assert set(row["fluency"]) == {"distinct_1", "distinct_2", "repetition_4"}
    per_type = {r["category"] for r in summary["metrics"] if r["condition"] == "image" and "accuracy" in r}
    assert per_type == {"all", "object", "shape", "colour", "count"}
    diffs = {
        (d["condition"], d["other"])
        for d in summary["differences"]
        if d["metric"] == "accuracy" and d["compare"] == "defense" and d["category"] == "all"
    }
    assert diffs == {(c, "system_prompt") for c in CONDITIONS}
    assert "accuracy" in output
