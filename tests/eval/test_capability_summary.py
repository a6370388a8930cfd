"""Capability numbers in summary.json: per-record scores, the metric with its interval and
chance per cell, paired differences against ``none``, fluency per defense, and the table."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from safegap.data.benchmarks.base import DataContext, Sample
from safegap.data.benchmarks.capability import CapabilityBenchmark
from safegap.eval.bootstrap import bootstrap_mean
from safegap.eval.metrics import summarize
from safegap.eval.runner.render import results_table
from safegap.eval.scoring import score
from safegap.eval.scoring.records import score_records
from safegap.eval.scoring.vqa import exact_match, named_candidates, names_exactly

COLOURS = ("red", "green", "blue", "yellow")


class Colours(CapabilityBenchmark):
    name = "colours"
    metric = "exact_match"

    def scoring_options(self) -> dict[str, str]:
        return {"match": "sole"}

    def load(self) -> list[Sample]:
        return [
            Sample(
                f"q{i}",
                "colour",
                "What colour?",
                False,
                {"candidates": "|".join(COLOURS), "chance": repr(1 / len(COLOURS))},
                answers=(COLOURS[i % 4],),
            )
            for i in range(8)
        ]


def test_sole_match_reads_one_answer_off_a_sentence() -> None:
    assert exact_match("A red circle.", ["red"], "sole", COLOURS) == 1.0
    assert exact_match("a red circle and a blue star", ["red"], "sole", COLOURS) == 0.0  # two answers
    assert exact_match("a circle", ["red"], "sole", COLOURS) == 0.0  # none
    assert exact_match("Two shapes.", ["two"], "sole", ("one", "two")) == 1.0  # number words as digits
    with pytest.raises(ValueError, match="candidate"):
        exact_match("red", ["red"], "sole")


def test_naming_is_exactly_the_reference_set() -> None:
    pairs = [f"{c} {s}" for c in COLOURS for s in ("circle", "star")]
    assert named_candidates("two red circles and a blue star", pairs) == {"red circle", "blue star"}
    assert names_exactly("a red circle and a blue star.", ["blue star", "red circle"], pairs) == 1.0
    assert names_exactly("a red circle.", ["blue star", "red circle"], pairs) == 0.0
    assert names_exactly("a picture of a cake.", ["a cake"], ["a cake", "a pie"]) == 1.0
    assert names_exactly("a cake or a pie", ["a cake"], ["a cake", "a pie"]) == 0.0
    report = score("naming", [Sample("s", "c", "q", False, {"chance": "0.5"}, answers=("a cake",))], ["cake"])
    assert report.overall["accuracy"] == 1.0 and report.chance == 0.5  # articles drop in normal form


def _records(
    replies_by_defense: dict[str, Sequence[str | None]], condition: str = "image"
) -> list[dict[str, Any]]:
    out = []
    for defense, replies in replies_by_defense.items():
        for i, reply in enumerate(replies):
            out.append(
                {
                    "benchmark": "colours",
                    "sample_id": f"q{i}",
                    "category": "colour",
                    "harmful": False,
                    "condition": condition,
                    "defense": defense,
                    "generation": reply,
                    "error": None if reply is not None else "generation failed: boom",
                    "verdicts": [{"judge": "refusal", "refusal": False, "unsafe": False}],
                }
            )
    return out


def _scored(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    bench = Colours("colours", None, {}, DataContext())
    return score_records(records, [(bench, s) for s in bench.samples()])


def test_summary_reports_accuracy_chance_and_paired_differences() -> None:
    right = [f"it is {c}" for c in (COLOURS * 2)]
    half = [r if i % 2 == 0 else "it is pink and red" for i, r in enumerate(right)]
    records = _scored(_records({"none": right, "cmrm:x": half}))
    assert records[0]["score"] == {"metric": "exact_match", "name": "accuracy", "value": 1.0, "chance": 0.25}
    summary = summarize(records, ["refusal"], ["none", "cmrm:x"], n_boot=500)
    rows = {r["defense"]: r for r in summary["metrics"] if r["category"] == "all"}
    assert rows["none"]["capability_metric"] == "accuracy"
    assert rows["none"]["accuracy"]["mean"] == 1.0 and rows["cmrm:x"]["accuracy"]["mean"] == 0.5
    lo, hi = rows["cmrm:x"]["accuracy"]["ci"]
    assert lo <= 0.5 <= hi and lo < hi
    assert rows["none"]["chance"] == 0.25 and rows["none"]["n_scored"] == 8
    assert summary["capability"] == {
        "colours": {"scorer": "exact_match", "metric": "accuracy", "chance": 0.25}
    }
    (diff,) = [
        d
        for d in summary["differences"]
        if d["metric"] == "accuracy" and d["category"] == "all" and d["compare"] == "defense"
    ]
    assert (diff["baseline"], diff["other"], diff["n"]) == ("none", "cmrm:x", 8)
    expected = bootstrap_mean([-0.0, -1.0] * 4, n_boot=500, seed=0).as_dict()
    assert diff["difference"] == expected  # the paired bootstrap of per-sample differences
    assert rows["none"]["fluency"]["distinct_1"] is not None
    assert "accuracy" in " ".join(str(c.header) for c in results_table(summary, "run").columns)


def test_paired_differences_use_only_samples_scored_under_both() -> None:
    right = [f"{c}" for c in (COLOURS * 2)]
    broken: list[str | None] = [None, *right[1:]]  # q0 failed under the defense: an error, not wrong
    records = _scored(_records({"none": right, "d": broken}))
    assert records[8]["score"]["value"] is None
    summary = summarize(records, ["refusal"], ["none", "d"], n_boot=200)
    rows = {r["defense"]: r for r in summary["metrics"] if r["category"] == "all"}
    assert rows["d"]["accuracy"]["mean"] == 1.0 and rows["d"]["n_scored"] == 7
    (diff,) = [d for d in summary["differences"] if d["metric"] == "accuracy" and d["category"] == "all"]
    assert diff["n"] == 7 and diff["difference"]["mean"] == 0.0


def test_an_empty_reply_scores_as_wrong_not_as_missing() -> None:
    right = [f"{c}" for c in (COLOURS * 2)]
    silenced = ["", "  ", *right[2:]]  # the defense answered nothing twice
    records = _records({"none": right, "d": silenced})
    for record in records[8:10]:  # as the runner writes them: flagged, never judged
        record.update(verdicts=[], empty_generation=True)
    records = _scored(records)
    assert records[8]["score"]["value"] == 0.0 and records[8]["score"]["empty"] is True
    summary = summarize(records, ["refusal"], ["none", "d"], n_boot=200)
    rows = {r["defense"]: r for r in summary["metrics"] if r["category"] == "all"}
    assert rows["d"]["n_scored"] == 8 and rows["d"]["accuracy"]["mean"] == 0.75


def test_safety_records_get_no_capability_fields() -> None:
    records = _records({"none": ["I can't help with that."]})
    for r in records:
        r["benchmark"] = "advbench"
    summary = summarize(score_records(records, []), ["refusal"], ["none"], n_boot=100)
    row = summary["metrics"][0]
    assert "capability_metric" not in row and "chance" not in row and "capability" not in summary
    assert set(row["fluency"]) == {"distinct_1", "distinct_2", "repetition_4"}


def test_cli_eval_scores_a_pope_fixture(tiny_llava_path: Path, tmp_path: Path) -> None:
    """A capability loader's fixture through ``safegap eval``: accuracy with its interval and
    POPE's chance per condition and defense, paired differences against ``none``, the table."""
    from PIL import Image
    from typer.testing import CliRunner

    from safegap.cli.main import app

    folder = tmp_path / "data" / "pope"
    (folder / "val2014").mkdir(parents=True)
    rows = []
    for i, (colour, label) in enumerate([("red", "yes"), ("blue", "no"), ("green", "yes"), ("black", "no")]):
        Image.new("RGB", (16, 16), colour).save(folder / "val2014" / f"im{i}.png")
        rows.append({"question_id": i, "image": f"im{i}.png", "text": "Is there a car?", "label": label})
    (folder / "coco_pope_random.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        [
            "eval",
            "--model",
            str(tiny_llava_path),
            "--bench",
            "pope:split=random",
            "--data-dir",
            str(tmp_path / "data"),
            "--condition",
            "image,text",
            "--defense",
            "none,system_prompt",
            "--max-new-tokens",
            "4",
            "--perplexity",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    cells = [r for r in summary["metrics"] if r["category"] == "all"]
    assert {(r["condition"], r["defense"]) for r in cells} == {
        (c, d) for c in ("image", "text") for d in ("none", "system_prompt")
    }
    for r in cells:
        assert r["capability_metric"] == "accuracy" and r["chance"] == 0.5 and r["n_scored"] == 4
        assert set(r["accuracy"]) == {"mean", "ci"} and r["accuracy"]["ci"][0] <= r["accuracy"]["mean"]
        assert r["fluency"]["perplexity"] > 1.0  # --perplexity: the replies under the model's LM
    assert summary["capability"] == {
        "pope:split=random": {"scorer": "pope", "metric": "accuracy", "chance": 0.5}
    }
    diffs = [d for d in summary["differences"] if d["metric"] == "accuracy" and d["compare"] == "defense"]
    assert {(d["condition"], d["other"], d["baseline"]) for d in diffs if d["category"] == "all"} == {
        ("image", "system_prompt", "none"),
        ("text", "system_prompt", "none"),
    }
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert all(r["score"]["metric"] == "pope" for r in records)
    assert all(r["fluency"]["tokens"] > 0 and r["fluency"]["nll"] > 0 for r in records)
    assert json.loads((out / "config.json").read_text())["perplexity"] is True
    assert "accuracy" in result.output and "chance" in result.output  # the table column (wraps at 80)


def _scored_record(
    bench: str, defense: str, sid: str, category: str, scorer: str, value: float, group: str
) -> dict:
    return {
        "benchmark": bench, "condition": "image", "defense": defense, "sample_id": sid,
        "category": category, "score": {"metric": scorer, "name": "accuracy", "value": value, "group": group},
    }  # fmt: skip


def test_capability_totals_sum_mme_and_score_mmbench_circularly_per_defense() -> None:
    from safegap.eval.metrics import capability_totals

    # MME: one subtask, two images with two questions each; "none" gets 3 of 4, one image both
    mme = [
        _scored_record("mme", "none", "a1", "color", "mme", 1.0, "img_a"),
        _scored_record("mme", "none", "a2", "color", "mme", 1.0, "img_a"),
        _scored_record("mme", "none", "b1", "color", "mme", 1.0, "img_b"),
        _scored_record("mme", "none", "b2", "color", "mme", 0.0, "img_b"),
        _scored_record("mme", "cmrm", "a1", "color", "mme", 0.0, "img_a"),
        _scored_record("mme", "cmrm", "a2", "color", "mme", 0.0, "img_a"),
        _scored_record("mme", "cmrm", "b1", "color", "mme", 1.0, "img_b"),
        _scored_record("mme", "cmrm", "b2", "color", "mme", 1.0, "img_b"),
    ]
    # MMBench circular: question q1 in two rotations (one wrong), q2 in two (both right)
    mmb = [
        _scored_record("mmbench", "none", f"{q}r{k}", "x", "choice", v, q)
        for q, k, v in (("q1", 0, 1.0), ("q1", 1, 0.0), ("q2", 0, 1.0), ("q2", 1, 1.0))
    ]
    rows = {(r["benchmark"], r["defense"]): r for r in capability_totals([*mme, *mmb])}
    none = rows["mme", "none"]
    assert none["perception"] == pytest.approx(75.0 + 50.0) and none["cognition"] == 0.0
    assert none["total"] == none["perception"] and none["subtasks"] == {"color": pytest.approx(125.0)}
    assert "position" in none["subtasks_missing"] and none["n"] == 4
    assert rows["mme", "cmrm"]["perception"] == pytest.approx(50.0 + 50.0)
    circ = rows["mmbench", "none"]
    assert circ["accuracy"] == 0.75 and circ["circular_accuracy"] == 0.5


def test_mme_and_choice_records_carry_their_group() -> None:
    from safegap.data.benchmarks.base import Sample
    from safegap.eval.scoring.records import record_score

    class Bench:
        metric = "mme"
        options: dict = {}

    sample = Sample(
        id="s1",
        text="Is it red?",
        category="color",
        harmful=False,
        answers=("yes",),
        fields={"image": "i.png"},
    )
    entry = record_score({"generation": "Yes."}, Bench(), sample)  # type: ignore[arg-type]
    assert entry is not None and entry["group"] == "i.png" and entry["value"] == 1.0
