"""``safegap demo``: step selection errors, and a scaled-down end-to-end run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from safegap.cli.demo import DEMO_STEPS
from safegap.cli.main import app

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def test_unknown_step_is_a_one_line_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--steps", "degradation,fly"])
    assert result.exit_code == 2
    assert "unknown demo step 'fly'" in result.output


def test_steps_are_a_list_later_work_can_extend() -> None:
    assert [s.name for s in DEMO_STEPS][0] == "degradation"


@pytest.mark.slow
def test_demo_end_to_end_small(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    args = [
        "demo",
        "--out",
        str(out),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--scale",
        "0.04",
        "--n-prompts",
        "4",
        "--threads",
        "1",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    study = json.loads((out / "degradation" / "study.json").read_text())
    assert set(study["results"]["plain"]["none"]) >= {"text", "benign_image", "text_filler"}
    assert (out / "degradation" / "study.md").read_text().startswith("# Organism degradation study")
    summary = json.loads((out / "demo.json").read_text())
    assert summary["steps"] == ["degradation"] and Path(summary["organism_path"]).is_dir()
    # a second run reuses the cached organism instead of training again
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    builds = json.loads((out / "degradation" / "study.json").read_text())["builds"]
    assert builds[0]["reused"] is True
