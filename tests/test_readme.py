"""README's Python section runs as written, on a scaled-down model organism."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from safegap.cli.main import app

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytestmark = pytest.mark.slow
README = Path(__file__).resolve().parents[1] / "README.md"


def python_block() -> str:
    """The first ```python block of the README's ``## Python`` section."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Python\n", 1)[1].split("\n## ", 1)[0]
    found = re.search(r"```python\n(.*?)```", section, flags=re.S)
    assert found, "README's Python section has no python block"
    return found.group(1)


def test_the_block_uses_the_public_api() -> None:
    code = python_block()
    for call in ("safegap.load(", "safegap.calibrate(", "safegap.Tune(", "shift.apply(vlm)", "safegap.CMRM("):
        assert call in code, call
    assert "safegap.mir(" in code and "safegap.evaluate(" in code


def test_readme_python_block_runs_on_the_organism(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    torch.set_num_threads(1)
    build = ["organism", "build", "--out", str(tmp_path / "organism"), "--seed", "0", "--scale", "0.04"]
    result = CliRunner().invoke(app, [*build, "--threads", "1", "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(python_block(), str(README), "exec"), namespace)  # noqa: S102 - the README's own code
    shift, gap, run = namespace["shift"], namespace["gap"], namespace["result"]
    assert shift.tuning is not None and (tmp_path / "shift.safetensors").is_file()  # type: ignore[attr-defined]
    assert math.isfinite(gap.mir)  # type: ignore[attr-defined]
    defenses = {row["defense"] for row in run.summary["metrics"]}  # type: ignore[attr-defined]
    assert "none" in defenses and any(d.startswith("cmrm:shift-") for d in defenses)
    out = capsys.readouterr().out
    assert "MIR " in out and "benign_image" in out
