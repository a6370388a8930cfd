"""``safegap organism build|study`` from the command line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from safegap.cli.main import app
from safegap.models import load_vlm
from safegap.organism.evaluate import CONDITIONS

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--variant", "plain,nope"], "unknown variant 'nope'"),
        (["--defense", "bogus"], "unknown defense 'bogus'"),
        (["--seeds", "x"], "not an integer"),
        (["--n-prompts", "0"], "--n-prompts must be at least 1"),
        (["--regime", "projector,bogus"], "unknown regime 'bogus'; known: full, projector"),
    ],
)
def test_study_rejects_bad_arguments(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["organism", "study", "--out", str(tmp_path), *args])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_build_and_study_small(tmp_path: Path) -> None:
    common = ["--scale", "0.04", "--threads", "1", "--cache-dir", str(tmp_path / "cache")]
    built = CliRunner().invoke(
        app, ["organism", "build", "--out", str(tmp_path / "org"), "--seed", "3", *common]
    )
    assert built.exit_code == 0, built.output
    assert load_vlm(tmp_path / "org").adapter.family == "llava"

    out = tmp_path / "study"
    args = [
        "organism",
        "study",
        "--out",
        str(out),
        "--seeds",
        "3,4",
        "--n-prompts",
        "6",
        "--n-real",
        "3",
        *common,
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    study = json.loads((out / "study.json").read_text())
    assert study["seeds"] == [3, 4]
    assert study["regimes"] == ["projector", "full"]
    table = study["results"]["full"]["plain"]["none"]
    assert set(study["results"]["projector"]["plain"]["none"]) == set(CONDITIONS)
    assert set(table) == set(CONDITIONS)
    for entry in table.values():
        for key in ("harmful_refusal", "benign_refusal"):
            mean, (lo, hi) = entry[key]["mean"], entry[key]["ci"]
            assert 0.0 <= lo <= mean <= hi <= 1.0
    assert "text_minus_benign_image" in study["differences"]["full"]["plain"]["none"]
    assert set(study["premises"]["projector"]) >= {
        "image_understanding",
        "caption_text",
        "representational_regime",
    }
    assert study["image_understanding"]["full"]["plain"]["mean"] is not None
    assert study["worst_over_refusal"]["full"]["plain"]["none"]["condition"] in CONDITIONS
    assert set(study["stages"]) == {"after_stage1", "after_stage2", "final"}
    assert study["build_seconds"]["max"] > 0
    assert {b["seed"] for b in study["builds"]} == {3, 4}
    rows = [
        json.loads(line)
        for line in (out / "per_seed" / "full__plain__none__seed3.jsonl").read_text().splitlines()
    ]
    assert {r["condition"] for r in rows} == set(CONDITIONS)
    assert all(isinstance(r["refused"], bool) for r in rows)
    # seed 3's base was cached by the build above and reused by the study
    assert "stage1_text" in next(b for b in study["builds"] if b["seed"] == 3)["cached"]
