"""``safegap demo``: step selection errors, and a scaled-down end-to-end run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from safegap.cli.demo import DEMO_STEPS
from safegap.cli.demo_cmrm import kind_rates
from safegap.cli.main import app

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def test_unknown_step_is_a_one_line_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--steps", "degradation,fly"])
    assert result.exit_code == 2
    assert "unknown demo step 'fly'" in result.output


def test_steps_are_a_list_later_work_can_extend() -> None:
    names = [s.name for s in DEMO_STEPS]
    assert names[0] == "degradation" and names.index("cmrm") > 0
    assert names.index("gap") > 0


def test_cmrm_step_alone_needs_an_organism(tmp_path: Path) -> None:
    args = ["demo", "--out", str(tmp_path / "demo"), "--steps", "cmrm", "--cache-dir", str(tmp_path / "none")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "run the demo's degradation step first" in " ".join(result.output.split())


def test_frontier_step_alone_needs_an_organism(tmp_path: Path) -> None:
    args = [
        "demo",
        "--out",
        str(tmp_path / "demo"),
        "--steps",
        "frontier",
        "--cache-dir",
        str(tmp_path / "none"),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "(--steps degradation,frontier)" in " ".join(result.output.split())


def test_gap_step_alone_needs_an_organism(tmp_path: Path) -> None:
    args = ["demo", "--out", str(tmp_path / "demo"), "--steps", "gap", "--cache-dir", str(tmp_path / "none")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "run the demo's degradation step first (--steps degradation,gap)" in " ".join(
        result.output.split()
    )


def test_before_after_rates_split_request_kinds() -> None:
    def record(kind: str, condition: str, defense: str, refused: bool) -> dict[str, object]:
        harmful = kind == "harmful"
        verdict = {"judge": "refusal@1", "refusal": refused, "unsafe": (not refused) if harmful else None}
        return {
            "condition": condition,
            "defense": defense,
            "harmful": harmful,
            "meta": {"kind": kind},
            "error": None,
            "verdicts": [verdict],
        }

    records = [
        record("harmful", "text", "none", True),
        record("harmful", "text", "none", False),
        record("benign", "text", "none", False),
        record("lookalike", "text", "none", True),
        record("harmful", "blank_image", "cmrm:x", True),
        {**record("benign", "blank_image", "cmrm:x", True), "error": "missing image"},
    ]
    rates = kind_rates(records, "refusal@1", n_boot=50)
    assert rates[("text", "none", "harmful")]["mean"] == 0.5 and rates[("text", "none", "harmful")]["n"] == 2
    assert rates[("text", "none", "benign")]["mean"] == 0.0
    assert rates[("text", "none", "lookalike")]["mean"] == 1.0
    assert rates[("blank_image", "cmrm:x", "harmful")]["mean"] == 0.0
    assert ("blank_image", "cmrm:x", "benign") not in rates  # errored samples are not scored


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
    assert set(study["results"]["full"]["plain"]["none"]) >= {"text", "benign_image", "text_filler"}
    assert "premises of the organism" in result.output
    assert (out / "degradation" / "study.md").read_text().startswith("# Organism degradation study")
    summary = json.loads((out / "demo.json").read_text())
    assert summary["steps"] == ["degradation", "gap", "cmrm", "frontier"]
    assert Path(summary["organism_path"]).is_dir()
    # the gap step: image vs text-filler MIR and the safety band on the after-stage-2 snapshot
    gap = json.loads((out / "gap" / "gap.json").read_text())
    assert gap["checkpoint"] == str(Path(summary["organism_path"]) / "stages" / "after_stage2")
    assert set(gap["gap"]) == {"benign_image", "text_filler"}
    assert (
        gap["mir_minus_filler"]["benign_image"]
        == gap["gap"]["benign_image"]["mir"] - gap["gap"]["text_filler"]["mir"]
    )
    for name in (
        "gap_benign_image/gap.json",
        "gap_text_filler/gap.json",
        "layers/layers.json",
        "fd_image_vs_filler.png",
    ):
        assert (out / "gap" / name).is_file(), name
    assert "safety band (logit lens, harmful text)" in result.output
    # the cmrm step: before/after CMRM on the organism, as an eval run with its report
    assert summary["cmrm_report"] == str(out / "cmrm" / "eval-organism-seed0" / "report.html")
    assert 'id="sample-table"' in Path(summary["cmrm_report"]).read_text(encoding="utf-8")
    cmrm = json.loads((out / "cmrm" / "cmrm.json").read_text())
    assert cmrm["limit"] == 8 and cmrm["defenses"][0] == "none" and cmrm["defenses"][1].startswith("cmrm:")
    assert cmrm["defenses"][2] == "cmrm_sample"
    cells = {(r["condition"], r["defense"], r["kind"]) for r in cmrm["rates"]}
    assert cells == {
        (c, d, k)
        for c in ("text", "benign_image", "blank_image")
        for d in cmrm["defenses"]
        for k in ("harmful", "benign", "lookalike")
    }
    eval_summary = json.loads((out / "cmrm" / "eval-organism-seed0" / "summary.json").read_text())
    assert {(r["condition"], r["defense"]) for r in eval_summary["metrics"] if r["category"] == "all"} == {
        (c, d) for c in ("text", "benign_image", "blank_image") for d in cmrm["defenses"]
    }
    assert "organism before / after CMRM" in result.output
    # the frontier step: every defense family on one frontier, with the rule's choice and report
    frontier = json.loads((out / "frontier" / "frontier.json").read_text())
    assert summary["frontier"] == str(out / "frontier" / "frontier.json")
    families = {p["family"] for p in frontier["points"]}
    assert {f.split(":")[0] for f in families} == {
        "none",
        "cmrm",
        "cmrm_sample",
        "vlm_guard",
        "refusal_direction",
    }
    assert sorted(p["alpha"] for p in frontier["points"] if p["family"] == "cmrm_sample") == [0.5, 1.0, 2.0]
    assert frontier["utility"] == ["organism_vqa:n=1"] and frontier["pareto"]
    # organism_vqa accuracy is measured for the baseline; x is capability only when every point
    # has it (a strong edit can leave every reply empty: unscored, so no capability cell)
    assert frontier["points"][0]["defense"] == "none" and frontier["points"][0]["capability"] is not None
    has_all = all(p["capability"] is not None for p in frontier["points"])
    assert frontier["x"]["axis"] == ("capability" if has_all else "over_refusal")
    assert frontier["selection"]["all"]["chosen"] in {p["defense"] for p in frontier["points"]}
    assert (out / "frontier" / "frontier.png").read_bytes()[:4] == b"\x89PNG"
    assert '<section id="frontier">' in (out / "frontier" / "report.html").read_text(encoding="utf-8")
    assert "on the Pareto front; the rule picks" in " ".join(result.output.split())
    # a second run reuses the cached organism instead of training again
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    builds = json.loads((out / "degradation" / "study.json").read_text())["builds"]
    assert builds[0]["reused"] is True


def test_train_step_is_optional() -> None:
    from safegap.cli.demo import OPTIONAL_STEPS

    assert "train" not in [s.name for s in DEMO_STEPS]
    assert [s.name for s in OPTIONAL_STEPS] == ["train"]


@pytest.mark.slow
def test_demo_train_step_shows_the_three_variants(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--scale", "0.04"]
    args += ["--n-prompts", "3", "--threads", "1", "--steps", "degradation", "--train"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "demo.json").read_text())["steps"] == ["degradation", "train"]
    study = json.loads((out / "train" / "study.json").read_text())
    assert list(study["results"]["full"]) == ["plain", "regap", "tga"]
    assert set(study["gap"]) == {"plain", "regap", "tga"} and "vs_plain" in study["gap"]["regap"]
    assert "harmful refusal by training variant" in result.output and "MIR term L0" in result.output
