"""Two CPU processes (gloo, launched by ``accelerate launch``) follow the one-process trajectory.

On CPU, ``accelerate launch --cpu --num_processes 2`` starts a single process in accelerate 1.x
(``--cpu`` goes to its simple launcher, which only fans out through an MPI hostfile). Two CPU
processes come from ``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2``,
which uses torchrun and makes accelerate pick the gloo backend.

Tolerance: the global batch is the same (2 processes x 2 rows vs 1 x 4 rows) and every loss is
a global mean, so the trajectories agree up to float32 reduction order: relative 1e-4 on losses
and regulariser values (observed: about 1e-7).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from safegap.train import TrainConfig, train

pytestmark = pytest.mark.slow
COMMON = ["--max-steps", "4", "--no-progress", "--seed", "5", "--checkpoint-every", "0"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def safegap_script() -> str:
    candidate = Path(sys.executable).parent / "safegap"
    found = str(candidate) if candidate.is_file() else shutil.which("safegap")
    assert found, "the safegap console script is not installed (pip install -e .)"
    return found


def launch(args: list[str], use_cpu: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if use_cpu:
        env["ACCELERATE_USE_CPU"] = "1"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()), safegap_script(), "train", *args,
    ]  # fmt: skip
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def metrics(out: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize(
    ("options", "cli", "keys"),
    [
        (dict(reg="regap"), ["--reg", "regap"], ["lm_loss", "regap/value", "grad_norm"]),
        (
            dict(reg="tga", tga_layers="1-2", stage="finetune", lora=True, lora_dropout=0.0),
            ["--reg", "tga", "--tga-layers", "1-2", "--stage", "finetune", "--lora", "--lora-dropout", "0"],
            ["lm_loss", "tga/value", "tga/cos_ic", "grad_norm"],
        ),
    ],
    ids=["regap-projector", "tga-lora"],
)
def test_two_processes_match_one(
    tiny_llava_dir: Path,
    dataset: Path,
    tmp_path: Path,
    options: dict[str, object],
    cli: list[str],
    keys: list[str],
) -> None:
    single = tmp_path / "single"
    train(
        TrainConfig(
            model=str(tiny_llava_dir),
            data=str(dataset),
            out=str(single),
            batch_size=4,
            max_steps=4,
            progress=False,
            seed=5,
            checkpoint_every=0,
            **options,  # type: ignore[arg-type]
        )
    )
    double = tmp_path / "double"
    done = launch(
        ["--model", str(tiny_llava_dir), "--data", str(dataset), "--out", str(double), "--batch-size", "2",
         *COMMON, *cli]
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = metrics(single), metrics(double)
    assert [m["step"] for m in two] == [1, 2, 3, 4]
    assert all(m["tokens"] == n["tokens"] for m, n in zip(one, two, strict=True))
    for m, n in zip(one, two, strict=True):
        for key in keys:
            assert n[key] == pytest.approx(m[key], rel=1e-4, abs=1e-6), (m["step"], key)
    a, b = load_file(str(single / "model.safetensors")), load_file(str(double / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only launch pitfall")
def test_processes_that_accelerate_does_not_group_are_refused(
    tiny_llava_dir: Path, dataset: Path, tmp_path: Path
) -> None:
    done = launch(
        ["--model", str(tiny_llava_dir), "--data", str(dataset), "--out", str(tmp_path / "x"), *COMMON],
        use_cpu=False,
    )
    assert done.returncode != 0
    assert "ACCELERATE_USE_CPU=1" in done.stderr
