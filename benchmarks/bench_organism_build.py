"""How long one organism build takes on this machine, against a 2-minute budget.

Two lines: the full build from nothing (tokenizer, CLIP, LLM pretraining and alignment,
projector, instruction tuning), and the build that reuses the cached text-aligned base (what
``safegap organism study`` and ``safegap demo`` pay per seed after the first run). ``ratio`` is
build seconds / 120 (target 1.0: at most the budget). The CPU may be shared: the load average
is reported next to the figure. ``--device``/``--dtype`` are accepted as by every benchmark; off
the CPU the line says skipped (the build is CPU-only).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchcommon import add_device_args, machine, resolve  # noqa: E402

from safegap.organism.build import build_organism  # noqa: E402
from safegap.organism.config import OrganismConfig  # noqa: E402

BUDGET_SECONDS = 120.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_device_args(parser)
    device, dtype = resolve(parser.parse_args())
    if device.type != "cpu":
        # the organism is built on the CPU by design (a 2-minute CPU budget, docs/organism.md)
        print(
            json.dumps(
                {
                    "benchmark": "organism_build_seconds",
                    "skipped": "the organism build is CPU-only",
                    **machine(device, dtype),
                }
            )
        )
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    threads = int(os.environ.get("SAFEGAP_BENCH_THREADS", "0")) or torch.get_num_threads()
    torch.set_num_threads(threads)
    config = OrganismConfig()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, cache in (
            ("organism_build_seconds", root / "cache"),
            ("organism_build_seconds_cached_base", root / "cache"),
        ):
            load_before = os.getloadavg()[0]
            start = time.perf_counter()
            report = build_organism(root / name, seed=0, config=config, cache_dir=cache)
            seconds = time.perf_counter() - start
            print(
                json.dumps(
                    {
                        "benchmark": name,
                        "ratio": round(seconds / BUDGET_SECONDS, 3),
                        "target": 1.0,
                        "seconds": round(seconds, 2),
                        "budget_seconds": BUDGET_SECONDS,
                        "cached": report.cached,
                        "stages": {k: v.get("seconds") for k, v in report.stages.items()},
                        "threads": threads,
                        "load_average_before": round(load_before, 2),
                        "cpu_count": os.cpu_count(),
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
