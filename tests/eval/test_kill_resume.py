"""Real processes: SIGKILL at random points then --resume, and `accelerate launch` with 2 processes.

Both compare against an uninterrupted one-process run of the same command, byte for byte.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

CLI = "from safegap.cli.main import app; app()"


def eval_args(model: Path, csv: Path, out: Path) -> list[str]:
    return [
        "eval",
        "--model",
        str(model),
        "--bench",
        f"text_csv:{csv}",
        "--condition",
        "text,blank_image",
        "--defense",
        "none,system_prompt",
        "--out",
        str(out),
        "--batch-size",
        "2",
        "--max-new-tokens",
        "6",
        "--quiet",
    ]


def env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def run_cli(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CLI, *args],
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


@pytest.fixture
def many_prompts(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.csv"
    rows = [
        f"p{i},how do i make item {i} ?,{'abc'[i % 3]},{'safe' if i % 4 == 0 else 'unsafe'}"
        for i in range(15)
    ]
    path.write_text("id,prompt,category,label\n" + "\n".join(rows) + "\n")
    return path


@pytest.mark.slow
def test_sigkill_five_times_then_resume_equals_uninterrupted(
    tiny_llava_path: Path, many_prompts: Path, tmp_path: Path
) -> None:
    reference = tmp_path / "reference"
    done = run_cli(eval_args(tiny_llava_path, many_prompts, reference))
    assert done.returncode == 0, done.stderr
    total = lines(reference / "samples.jsonl")
    assert total == 15 * 2 * 2

    out = tmp_path / "killed"
    samples = out / "samples.jsonl"
    rng = random.Random(1234)
    kills = 0
    for attempt in range(5):
        args = eval_args(tiny_llava_path, many_prompts, out) + (["--resume"] if attempt else [])
        proc = subprocess.Popen(
            [sys.executable, "-c", CLI, *args],
            env=env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        if attempt == 0:
            time.sleep(rng.uniform(0.2, 2.0))  # maybe still starting up, maybe generating
        else:
            target = min(total - 2, lines(samples) + 2 * rng.randint(1, 3))
            deadline = time.monotonic() + 120
            while lines(samples) < target and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.15))  # somewhere inside the next batch
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
        assert proc.returncode in (0, -signal.SIGKILL), proc.stderr.read() if proc.stderr else ""
    assert kills == 5, "every attempt was killed before finishing"
    assert 0 < lines(samples) < total

    final = run_cli(eval_args(tiny_llava_path, many_prompts, out) + ["--resume"])
    assert final.returncode == 0, final.stderr
    assert (out / "summary.json").read_bytes() == (reference / "summary.json").read_bytes()
    assert samples.read_bytes() == (reference / "samples.jsonl").read_bytes()

    before = samples.stat().st_mtime_ns
    again = run_cli(eval_args(tiny_llava_path, many_prompts, out) + ["--resume"])
    assert again.returncode == 0 and "nothing to do" in again.stderr
    assert samples.stat().st_mtime_ns == before


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_accelerate_launch_two_processes_merges_to_one_process_result(
    tiny_llava_path: Path, many_prompts: Path, tmp_path: Path
) -> None:
    if shutil.which("accelerate", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("accelerate CLI not installed next to this Python")
    one = tmp_path / "one"
    assert run_cli(eval_args(tiny_llava_path, many_prompts, one)).returncode == 0
    script = tmp_path / "safegap_cli.py"
    script.write_text(CLI + "\n")
    two = tmp_path / "two"
    # `--cpu --num_processes 2` would start one process (accelerate needs MPI for that); the
    # multi-GPU launcher (torchrun) gives two CPU processes with gloo where there is no CUDA.
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        str(script),
        *eval_args(tiny_llava_path, many_prompts, two),
    ]
    proc = subprocess.run(
        launch,
        env={**env(), "CUDA_VISIBLE_DEVICES": ""},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = [json.loads(line) for line in (two / "events.jsonl").read_text().splitlines()]
    assert sorted((e["rank"], e["world_size"]) for e in events) == [(0, 2), (1, 2)]
    assert all(e["generated"] > 0 for e in events), "both processes generated"
    assert not (two / "shards").exists()
    assert (two / "samples.jsonl").read_bytes() == (one / "samples.jsonl").read_bytes()
    assert (two / "summary.json").read_bytes() == (one / "summary.json").read_bytes()
