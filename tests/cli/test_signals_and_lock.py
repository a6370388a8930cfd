"""Real processes: SIGINT/SIGTERM print one line saying what was saved; two evals on one --out."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from safegap.testing import build_tiny

CLI = "from safegap.cli.main import main; main()"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return build_tiny("llava", tmp_path_factory.mktemp("signals_tiny"))


@pytest.fixture
def many(tmp_path: Path) -> Path:
    path = tmp_path / "many.csv"
    path.write_text("id,prompt\n" + "".join(f"p{i},how do i make thing number {i} ?\n" for i in range(3000)))
    return path


def start(model: Path, csv: Path, out: Path, *extra: str) -> subprocess.Popen[str]:
    args = ["eval", "--model", str(model), "--bench", f"text_csv:{csv}", "--condition", "text"]
    args += ["--out", str(out), "--batch-size", "2", "--max-new-tokens", "12", "--quiet", *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen(
        [sys.executable, "-c", CLI, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for_results(out: Path, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    samples = out / "samples.jsonl"
    while time.monotonic() < deadline:
        if samples.exists() and samples.read_bytes().count(b"\n") >= 2:
            return
        if proc.poll() is not None:
            pytest.fail(f"eval ended early: {proc.communicate()}")
        time.sleep(0.05)
    pytest.fail("no results in time")


def keys(out: Path) -> list[str]:
    return [json.loads(line)["sample_id"] for line in (out / "samples.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_prints_what_was_saved_and_how_to_resume(
    tiny: Path, many: Path, tmp_path: Path, signum: signal.Signals
) -> None:
    out = tmp_path / "run"
    proc = start(tiny, many, out)
    wait_for_results(out, proc)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert f"interrupted by {signum.name}" in errors[0] and "--resume" in errors[0]
    saved = len(keys(out))
    assert f"{saved} result(s) saved in {out}" in errors[0]


def test_a_second_eval_on_the_same_out_refuses(tiny: Path, many: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = start(tiny, many, out)
    wait_for_results(out, first)
    second = start(tiny, many, out, "--resume")
    _, err = second.communicate(timeout=120)
    assert second.returncode == 2, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "in use by another safegap eval" in errors[0], err
    assert first.poll() is None, "the first run went on"
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=120)
    found = keys(out)
    assert found and len(found) == len(set(found))  # nothing interleaved or duplicated
    assert not list(out.glob(".*.tmp*"))
