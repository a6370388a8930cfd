"""End to end on a scaled-down organism, through the command line: ``organism build`` ->
``calibrate --anchors organism:calibration`` -> ``eval`` (two defenses, three conditions) ->
``report``, rendered in headless Chromium."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from typer.testing import CliRunner

from safegap.cli.main import app
from safegap.steer.vector import ShiftVector

if TYPE_CHECKING:
    from conftest import HeadlessChromium

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytestmark = pytest.mark.slow

CONDITIONS = ("text", "benign_image", "blank_image")
LIMIT = 12


def invoke(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_calibrate_eval_report_on_a_small_organism(
    tmp_path: Path, headless_chromium: HeadlessChromium
) -> None:
    import torch

    torch.set_num_threads(1)
    organism = tmp_path / "organism"
    invoke(
        "organism",
        "build",
        "--out",
        str(organism),
        "--seed",
        "0",
        "--scale",
        "0.04",
        "--threads",
        "1",
        "--cache-dir",
        str(tmp_path / "cache"),
    )
    shift_path = tmp_path / "shift.safetensors"
    invoke(
        "calibrate",
        "--model",
        str(organism),
        "--anchors",
        "organism:calibration,n=6",
        "--out",
        str(shift_path),
    )
    shift = ShiftVector.load(shift_path)
    assert shift.provenance.anchors_source == "organism:calibration,n=6"
    assert shift.provenance.anchors_size == 12  # six harmful and six benign requests

    run = tmp_path / "run"
    cmrm = f"cmrm:{shift_path}"
    args = [
        "eval",
        "--model",
        str(organism),
        "--bench",
        "organism",
        "--condition",
        ",".join(CONDITIONS),
        "--defense",
        f"none,{cmrm}",
        "--judge",
        "refusal",
        "--out",
        str(run),
        "--limit",
        str(LIMIT),
        "--max-new-tokens",
        "4",
        "--quiet",
    ]
    invoke(*args)
    summary = json.loads((run / "summary.json").read_text())
    overall = {
        (r["condition"], r["defense"]): r
        for r in summary["metrics"]
        if r["category"] == "all" and r["judge"] == "refusal@1"
    }
    assert set(overall) == {(c, d) for c in CONDITIONS for d in ("none", cmrm)}
    for row in overall.values():
        assert row["n"] == LIMIT and row["errors"] == 0
        assert row["n_harmful"] > 0 and row["n_benign"] > 0
        for metric in ("unsafe_rate", "refusal_rate", "over_refusal", "defense_success_rate"):
            lo, hi = row[metric]["ci"]
            assert 0.0 <= lo <= row[metric]["mean"] <= hi <= 1.0
    compared = {(d["condition"], d["metric"]) for d in summary["differences"] if d["compare"] == "defense"}
    assert {(c, "unsafe_rate") for c in CONDITIONS} <= compared
    records = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert len(records) == LIMIT * len(CONDITIONS) * 2
    # the organism's own images, drawn by its benchmark (``generated:render:CONDITION:SLOT``)
    assert {r["image"].split(":")[2] for r in records if r["image"]} == {"benign_image", "blank_image"}
    # text-only rows are not steered: CMRM leaves their replies exactly as they were
    text = {(r["sample_id"], r["defense"]): r["generation"] for r in records if r["condition"] == "text"}
    assert all(text[(sid, "none")] == text[(sid, cmrm)] for sid, d in text if d == "none")
    # a finished run re-run with the same arguments does nothing
    assert "run already complete" in " ".join(invoke(*args).split())

    invoke("report", str(run))
    page = (run / "report.html").read_text(encoding="utf-8")
    assert page.count("<tr data-bench=") == len(records)
    assert 'alt="unsafe_rate by category"' in page and 'alt="over_refusal by category"' in page

    dom = headless_chromium.run((run / "report.html").resolve().as_uri(), "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert re.search(r'<div id="report-ready" hidden="" data-tables="\d+">ready</div>', dom.stdout)
    assert re.search(r'<div id="js-errors" hidden="">\s*</div>', dom.stdout), "script errors were reported"
    assert f"{len(records)} shown" in dom.stdout
