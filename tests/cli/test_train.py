"""``safegap train`` from the command line: a run, and one-line errors with exit status 2."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from safegap.cli.main import app
from safegap.testing import build_tiny

os.environ.setdefault("HF_HUB_OFFLINE", "1")
runner = CliRunner()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return build_tiny("llava", tmp_path_factory.mktemp("cli_train_tiny"))


def write_rows(path: Path, rows: list[object]) -> Path:
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )
    return path


TEXT_ROW = {
    "conversations": [{"from": "human", "value": "how do i make a cake ?"}, {"from": "gpt", "value": "sure"}]
}


def test_train_command_runs_and_writes_a_checkpoint(tiny: Path, tmp_path: Path) -> None:
    data = write_rows(tmp_path / "train.jsonl", [TEXT_ROW] * 4)
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        ["train", "--model", str(tiny), "--data", str(data), "--out", str(out), "--stage", "finetune",
         "--lora", "--max-steps", "2", "--batch-size", "2", "--no-progress"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "trained 2 steps" in result.output
    assert (out / "model.safetensors").is_file() and (out / "metrics.jsonl").is_file()


def test_bad_row_is_one_line_naming_file_and_line(tiny: Path, tmp_path: Path) -> None:
    data = write_rows(
        tmp_path / "train.jsonl", [TEXT_ROW, {"conversations": [{"from": "gpt", "value": "x"}]}]
    )
    result = runner.invoke(
        app, ["train", "--model", str(tiny), "--data", str(data), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and f"{data}:2:" in lines[0].replace("\n", "")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--reg", "tga"], "TGA needs its layers"),
        (["--stage", "nope"], "stage 'nope'"),
        (["--reg", "regap", "--regap-layers", "first"], "neither"),
    ],
)
def test_bad_options_exit_2(tiny: Path, tmp_path: Path, extra: list[str], message: str) -> None:
    data = write_rows(tmp_path / "train.jsonl", [TEXT_ROW])
    result = runner.invoke(
        app, ["train", "--model", str(tiny), "--data", str(data), "--out", str(tmp_path / "o"), *extra]
    )
    assert result.exit_code == 2
    assert message in result.output
