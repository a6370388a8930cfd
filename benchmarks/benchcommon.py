"""Shared by the benchmarks: ``--device``/``--dtype``, interleaved rounds and the machine's load.

Not a benchmark itself (``make bench`` runs ``bench_*.py``). ``--device`` defaults to
``$SAFEGAP_BENCH_DEVICE`` or ``cpu``; ``--dtype auto`` is float32 on the CPU and bfloat16 on
CUDA, the dtypes a user runs there.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def add_device_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=os.environ.get("SAFEGAP_BENCH_DEVICE", "cpu"))
    parser.add_argument(
        "--dtype",
        default=os.environ.get("SAFEGAP_BENCH_DTYPE", "auto"),
        choices=["auto", "float32", "bfloat16", "float16"],
    )


def resolve(args: argparse.Namespace) -> tuple[torch.device, torch.dtype]:
    """The device and dtype the arguments name (``auto``: float32 on CPU, bfloat16 on CUDA)."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"error: --device {args.device} but CUDA is not available")
    name = args.dtype
    if name == "auto":
        name = "bfloat16" if device.type == "cuda" else "float32"
    return device, getattr(torch, name)


def sync(device: torch.device) -> None:
    """Wait for queued kernels, so a clock read after it covers them."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def machine(device: torch.device, dtype: torch.dtype, threads: int | None = None) -> dict[str, Any]:
    """What a reader needs to judge the figure: device, dtype, threads, load average."""
    out: dict[str, Any] = {
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "threads": threads if threads is not None else torch.get_num_threads(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
    }
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def interleaved(
    arms: dict[str, Callable[[], object]], base: str, rounds: int, device: torch.device, warmup: bool = True
) -> dict[str, dict[str, Any]]:
    """Interleaved rounds (order reversed every other round), one warm-up per arm; per arm the
    median of per-round ratios arm/base on CPU and on wall time, and median absolute times. On
    CUDA the wall ratio is the one that means something (the host mostly waits)."""
    if warmup:
        for fn in arms.values():
            fn()
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in arms}
    names = list(arms)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            sync(device)
            wall, cpu = time.perf_counter(), time.process_time()
            arms[name]()
            sync(device)
            times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    out = {}
    for name in names:
        cpu_ratio = [t[1] / b[1] for t, b in zip(times[name], times[base], strict=True)]
        wall_ratio = [t[0] / b[0] for t, b in zip(times[name], times[base], strict=True)]
        q = statistics.quantiles(cpu_ratio, n=4) if len(cpu_ratio) > 1 else [cpu_ratio[0]] * 3
        out[name] = {
            "cpu_ratio": statistics.median(cpu_ratio),
            "cpu_ratio_iqr": [q[0], q[2]],
            "wall_ratio": statistics.median(wall_ratio),
            "wall_s": statistics.median(t[0] for t in times[name]),
            "cpu_s": statistics.median(t[1] for t in times[name]),
        }
    return out


def ratio_of(res: dict[str, Any], device: torch.device) -> float:
    """The ratio a benchmark reports: CPU time on the CPU (time-slicing on a shared box barely
    moves it), wall time on CUDA."""
    return float(res["wall_ratio"] if device.type == "cuda" else res["cpu_ratio"])
