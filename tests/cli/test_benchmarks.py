"""`safegap benchmarks` and `safegap eval --help`: the benchmark names, layouts and options a user
needs to write --bench, and docs/evaluation.md documenting every option key."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from safegap.cli.main import app
from safegap.data.benchmarks import BENCHMARKS

runner = CliRunner()
DOCS = Path(__file__).resolve().parents[2] / "docs" / "evaluation.md"
#: The safety benchmarks of safegap.data.benchmarks (the organism plug-in and the capability
#: loaders document themselves in their own sections).
IN_TREE = [
    "advbench",
    "figstep",
    "figstep_tiny",
    "harmbench",
    "harmbench_mm",
    "jailbreakv",
    "jailbreakv_mini",
    "mm_safetybench",
    "mm_safetybench_tiny",
    "strongreject",
    "strongreject_small",
    "text_csv",
    "vlsafe",
    "xstest",
]


def test_eval_help_lists_every_benchmark_name() -> None:
    result = runner.invoke(app, ["eval", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for name in BENCHMARKS:
        assert re.search(rf"\b{re.escape(name)}\b", text), name
    assert "safegap benchmarks" in text


def test_benchmarks_lists_names_layouts_and_options() -> None:
    result = runner.invoke(app, ["benchmarks"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert all(len(line) <= 80 for line in result.output.splitlines())
    for name in BENCHMARKS:
        assert re.search(rf"^{re.escape(name)}\s", result.output, re.M), name
    flat = " ".join(result.output.split())
    for key in ("prompt=", "category=", "id=", "label=", "images=", "coco="):
        assert key in flat
    assert "harmbench_behaviors_multimodal_all.csv" in flat and "image*" in flat


def test_benchmarks_json_is_the_registry() -> None:
    result = runner.invoke(app, ["benchmarks", "--json"])
    assert result.exit_code == 0, result.output
    infos = {i["name"]: i for i in json.loads(result.stdout)}
    assert list(infos) == list(BENCHMARKS)
    assert set(infos["text_csv"]["options"]) == {"prompt", "category", "id", "label"}
    assert infos["harmbench_mm"]["default_conditions"] == ["image"]
    assert infos["harmbench"]["options"] == {} and "image" not in infos["harmbench"]["conditions"]
    one = json.loads(runner.invoke(app, ["benchmarks", "harmbench_mm", "--json"]).stdout)
    assert [i["name"] for i in one] == ["harmbench_mm"] and "images" in one[0]["options"]


def test_benchmarks_of_an_unknown_name_is_one_line_naming_close_ones() -> None:
    result = runner.invoke(app, ["benchmarks", "harmbench-mm"])
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "did you mean harmbench_mm" in errors[0] and "Traceback" not in result.stderr


@pytest.mark.parametrize("name", IN_TREE)
def test_every_benchmark_declares_its_layout_and_documented_options(name: str) -> None:
    cls = BENCHMARKS[name]
    assert cls.layout, f"{name} has no layout"
    assert set(cls.option_help) == set(cls.option_keys), name
    assert all(cls.option_help.values()), name
    docs = DOCS.read_text(encoding="utf-8")
    assert f"`{name}" in docs, f"{name} is not in docs/evaluation.md"
    for key in cls.option_keys:
        assert f"`{key}=" in docs, f"{name}'s option {key}= is not in docs/evaluation.md"


def test_a_misspelt_text_csv_option_is_an_error_not_ignored(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text("prompt,category\nx,y\n", encoding="utf-8")
    result = runner.invoke(
        app, ["eval", "--model", "m", "--bench", f"text_csv:{path},catgory=x", "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: benchmark text_csv: unknown option 'catgory'; valid: category, id, label, prompt "
        "(did you mean 'category'?)"
    ]
    assert not (tmp_path / "o").exists()


def test_a_wrong_images_folder_stops_the_cli_before_the_model(tmp_path: Path) -> None:
    folder = tmp_path / "harmbench"
    folder.mkdir()
    (folder / "harmbench_behaviors_multimodal_all.csv").write_text(
        "Behavior,BehaviorID,ImageFileName\nExplain this,hb_1,a.png\n", encoding="utf-8"
    )
    result = runner.invoke(
        app,
        [
            "eval",
            "--model",
            "no/such-model",
            "--bench",
            "harmbench_mm",
            "--data-dir",
            str(tmp_path),
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "none of its 1 image(s) exist" in errors[0], result.stderr


CAPABILITY = ["mmbench", "mme", "mossbench", "pope", "scienceqa_img", "textvqa", "vqav2"]
CAPABILITY += ["organism_vqa", "organism_caption"]


@pytest.mark.parametrize("name", CAPABILITY)
def test_capability_and_organism_benchmarks_show_layout_and_options(name: str) -> None:
    cls = BENCHMARKS[name]
    assert cls.layout, f"{name} has no layout"
    assert set(cls.option_help) == set(cls.option_keys) and all(cls.option_help.values()), name
    result = runner.invoke(app, ["benchmarks", name], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.split())
    assert "files -" not in flat and cls.layout.split()[0] in flat
    for key in cls.option_keys:
        assert f"{key}=" in flat, f"{name}: {key}= not shown"
