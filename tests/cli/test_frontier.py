"""``safegap frontier`` through the command line: bad arguments fail in one line before a model
loads; on a scaled organism a small grid (CMRM sample-level and both peer defenses at two
strengths) writes frontier.json (one point per defense and strength, intervals, Pareto flags,
the selection) and frontier.png."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from safegap.cli.main import app

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--alpha-grid", "0.5,x"], "--alpha-grid '0.5,x': 'x' is not a number"),
        (["--x", "accuracy"], "--x 'accuracy': use capability, over_refusal or auto"),
        (["--defense", "cmrn:x"], "unknown defense 'cmrn'"),
    ],
)
def test_bad_arguments_fail_in_one_line(tmp_path: Path, extra: list[str], message: str) -> None:
    args = [
        "frontier",
        "--model",
        str(tmp_path / "nomodel"),
        "--safety",
        "organism",
        "--out",
        str(tmp_path / "o"),
    ]
    if "--defense" not in extra:
        args += ["--defense", "cmrm_sample"]
    code, output = _run(*args, *extra)
    assert code != 0
    assert message in output and "Traceback" not in output


@pytest.mark.slow
def test_frontier_on_a_scaled_organism(tmp_path: Path) -> None:
    import torch

    from safegap.data.benchmarks import BENCHMARKS

    torch.set_num_threads(1)
    organism = tmp_path / "organism"
    code, output = _run(
        "organism", "build", "--out", str(organism), "--seed", "0", "--scale", "0.04",
        "--threads", "1", "--cache-dir", str(tmp_path / "cache"),
    )  # fmt: skip
    assert code == 0, output
    # the organism's capability set, once it is registered, puts capability on the x axis
    utility = ["--utility", "organism_vqa"] if "organism_vqa" in BENCHMARKS else []
    out = tmp_path / "frontier"
    code, output = _run(
        "frontier", "--model", str(organism), "--safety", "organism", *utility,
        "--defense", "cmrm_sample,refusal_direction:organism:calibration,n=6,vlm_guard:organism:calibration,n=6",
        "--alpha-grid", "0.5,2", "--limit", "8", "--condition", "text,benign_image",
        "--max-new-tokens", "6", "--out", str(out), "--quiet",
    )  # fmt: skip
    assert code == 0, output
    data = json.loads((out / "frontier.json").read_text(encoding="utf-8"))
    defenses = [p["defense"] for p in data["points"]]
    assert defenses == [
        "none",
        "cmrm_sample:alpha=0.5",
        "cmrm_sample:alpha=2",
        "refusal_direction:organism:calibration,n=6,strength=0.5",
        "refusal_direction:organism:calibration,n=6,strength=2",
        "vlm_guard:organism:calibration,n=6,alpha=0.5",
        "vlm_guard:organism:calibration,n=6,alpha=2",
    ]
    assert data["x"]["axis"] == ("capability" if utility else "over_refusal")
    for point in data["points"]:
        for axis in ("x", "y"):
            lo, hi = point[axis]["ci"]
            assert lo <= point[axis]["mean"] <= hi
        assert point["y"]["cell"].startswith("organism:")
    assert set(data["pareto"]) == {p["defense"] for p in data["points"] if p["pareto"]} and data["pareto"]
    assert data["selection"]["all"]["chosen"] in defenses
    assert set(data["selection"]) == {
        "cmrm_sample",
        "refusal_direction:organism:calibration,n=6",
        "vlm_guard:organism:calibration,n=6",
        "all",
    }
    assert (out / "frontier.png").read_bytes()[:4] == b"\x89PNG"
    report = (out / "report.html").read_text(encoding="utf-8")  # the run's report shows the frontier
    assert '<section id="frontier">' in report and report.count('<tr class="pareto') == len(data["pareto"])
    summary = json.loads((out / "run" / "summary.json").read_text(encoding="utf-8"))
    assert {r["defense"] for r in summary["metrics"]} == set(defenses)
    # a finished grid is not run again
    code, output = _run(
        "frontier", "--model", str(organism), "--safety", "organism", *utility,
        "--defense", "cmrm_sample,refusal_direction:organism:calibration,n=6,vlm_guard:organism:calibration,n=6",
        "--alpha-grid", "0.5,2", "--limit", "8", "--condition", "text,benign_image",
        "--max-new-tokens", "6", "--out", str(out), "--quiet",
    )  # fmt: skip
    assert code == 0 and "already evaluated" in output, output
