"""``safegap info MODEL``: family, layer count, hidden size and image-token id."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from safegap.cli.main import app
from safegap.testing import build_tiny

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny("qwen2_vl", tmp_path_factory.mktemp("info_qwen2_vl"))


def test_info_json(qwen_dir: Path) -> None:
    result = CliRunner().invoke(app, ["info", str(qwen_dir), "--json"])
    assert result.exit_code == 0, result.output
    facts = json.loads(result.stdout.strip().splitlines()[-1])
    assert facts["family"] == "qwen2_vl"
    assert facts["num_layers"] == 3 and facts["hidden_size"] == 64
    assert facts["image_token_ids"] == [json.loads((qwen_dir / "config.json").read_text())["image_token_id"]]
    assert facts["layers_path"] == "model.language_model.layers"


def test_info_table(qwen_dir: Path) -> None:
    result = CliRunner().invoke(app, ["info", str(qwen_dir)])
    assert result.exit_code == 0, result.output
    for expected in ("family", "qwen2_vl", "num_layers", "hidden_size", "64", "image_token_ids"):
        assert expected in result.stdout


def test_info_on_a_missing_path_is_one_line_and_non_zero(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    result = CliRunner().invoke(app, ["info", str(missing)])
    assert result.exit_code == 2
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1 and "does not exist" in errors[0] and "nope" in errors[0]
