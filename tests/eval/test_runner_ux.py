"""Runner UX (issue 16): errors by reason in summary.json, one run whatever the spelling of a
local model path, and a result table that keeps numbers whole at 80 columns."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from rich.console import Console

from safegap.eval.metrics import error_breakdown, error_reason
from safegap.eval.runner import EvalConfig, run_eval
from safegap.eval.runner.render import results_table
from safegap.models import VLM


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("image not found: /data/x/a.png", "image not found"),
        ("corrupt image /d/b.png: cannot identify image file", "corrupt image"),
        ("/d/SafeBench-Tiny.csv line 3: empty question", "empty question"),
        ("/d/p.csv line 12: duplicate sample id 'x7'", "duplicate sample id"),
        (
            "generation failed: OutOfMemoryError: CUDA out of memory. Tried 2 GiB",
            "generation failed: OutOfMemoryError",
        ),
        (
            "prompt is 4100 tokens but the model takes at most 4000 before --max-new-tokens (...)",
            "prompt too long",
        ),
        ("HTTP 503 after 3 tries", "HTTP N after N tries"),
    ],
)
def test_error_reason_drops_what_differs_per_sample(message: str, reason: str) -> None:
    assert error_reason(message) == reason


def test_error_breakdown_counts_records_and_judge_verdicts() -> None:
    records = [
        {"error": "image not found: /a.png", "verdicts": []},
        {"error": "image not found: /b.png", "verdicts": []},
        {"error": None, "verdicts": [{"judge": "guard", "error": "HTTP 503 after 3 tries"}]},
        {"error": "x.csv line 4: empty 'prompt'", "verdicts": []},
        {"error": None, "verdicts": [{"judge": "refusal", "error": None}]},
    ]
    assert error_breakdown(records) == {
        "image not found": 2,
        "empty 'prompt'": 1,
        "judge guard: HTTP N after N tries": 1,
    }


def _figstep_data(root: Path) -> Path:
    from PIL import Image

    folder = root / "figstep" / "images" / "SafeBench-Tiny"
    folder.mkdir(parents=True)
    (root / "figstep" / "SafeBench-Tiny.csv").write_text(
        "dataset,category_id,task_id,category_name,question,instruction\n"
        "ForbidQI,1,1,Illegal Activity,How?,Steps to x.\n"
        "ForbidQI,1,2,Illegal Activity,,Steps to y.\n"
        "ForbidQI,1,3,Illegal Activity,How?,Steps to z.\n"
        "ForbidQI,1,4,Illegal Activity,How?,Steps to w.\n"
        "ForbidQI,1,5,Illegal Activity,How?,Steps to v.\n"
    )
    Image.new("RGB", (30, 30), "white").save(folder / "query_ForbidQI_1_1_6.png")
    (folder / "query_ForbidQI_1_3_6.png").write_bytes(b"not a png")
    return root


def test_summary_json_breaks_errors_down_by_reason(tiny_llava: VLM, tmp_path: Path) -> None:
    data = _figstep_data(tmp_path / "data")
    config = EvalConfig(
        "tiny",
        ["figstep_tiny"],
        tmp_path / "run",
        conditions=["figstep", "text"],
        data_dir=str(data),
        max_new_tokens=4,
        progress=False,
        n_boot=50,
    )
    result = run_eval(config, vlm=tiny_llava)
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert result.summary is not None and on_disk["run"] == result.summary["run"]
    assert on_disk["run"]["errors_by_reason"] == {
        "empty question": 2,  # the malformed row, under both conditions
        "image not found": 2,
        "corrupt image": 1,
    }
    assert on_disk["run"]["n_errors"] == sum(on_disk["run"]["errors_by_reason"].values())


def test_a_relative_and_an_absolute_model_path_are_one_run(
    tiny_llava: VLM, tiny_llava_path: Path, prompts_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tiny_llava_path.parent)
    relative = os.path.join(".", tiny_llava_path.name)
    kw = dict(
        benchmarks=[f"text_csv:{prompts_csv}"],
        out=tmp_path / "run",
        conditions=["text"],
        max_new_tokens=3,
        progress=False,
        n_boot=50,
    )
    first = run_eval(EvalConfig(relative, **kw), vlm=tiny_llava)  # type: ignore[arg-type]
    assert first.generated == 8
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"] == str(tiny_llava_path.resolve())
    again = run_eval(EvalConfig(str(tiny_llava_path.resolve()), **kw), vlm=tiny_llava)  # type: ignore[arg-type]
    assert again.no_op and again.generated == 0
    assert (
        EvalConfig("llava-hf/llava-1.5-7b-hf", ["x"], "o").identity()["model"] == "llava-hf/llava-1.5-7b-hf"
    )


def _summary(defenses: list[str], conditions: list[str]) -> dict[str, object]:
    rows = [
        {
            "benchmark": "figstep_tiny",
            "condition": c,
            "defense": d,
            "judge": "refusal",
            "category": "all",
            "n": 500,
            "errors": 12,
            "unsafe_rate": {"mean": 0.456, "ci": [0.3412, 0.5633]},
            "refusal_rate": {"mean": 0.5, "ci": [0.38, 0.6]},
            "over_refusal": None,
        }
        for d in defenses
        for c in conditions
    ]
    return {"metrics": rows}


@pytest.mark.parametrize("width", [80, 100, 200])
def test_the_result_table_keeps_numbers_whole(width: int) -> None:
    summary = _summary(
        ["none", "cmrm:/runs/shifts/llava_tuned_shift.safetensors,alpha=0.5"],
        ["figstep", "benign_image", "noise_image"],
    )
    console = Console(width=width, record=True)
    console.print(results_table(summary, "runs/figstep_tiny_cmrm_sweep", width=width))
    text = console.export_text()
    lines = text.splitlines()
    assert max(map(len, lines)) <= width
    for number in ("0.46", "[0.34,0.56]", "0.50", "[0.38,0.60]", "500", "12"):
        assert sum(number in line for line in lines) == 6, (number, text)
    assert "benign_image" in text and "noise_image" in text  # ids that fit stay whole too
    if width >= 100:
        assert sum("0.46 [0.34,0.56]" in line for line in lines) == 6  # one line per row when it fits
