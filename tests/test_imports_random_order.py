"""Every module imports on its own, in any order, in a fresh interpreter: no module relies on
another having been imported first (a registry filled as a side effect, a cycle that only works
from one end)."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def all_modules() -> list[str]:
    out = []
    for path in sorted((SRC / "safegap").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out


SEEDS = (0, 1, 2)
IMPORT_ALL = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"


def test_modules_import_in_random_order() -> None:
    """A few shuffled orders, one fresh interpreter each, run side by side (most of the time is
    torch and transformers loading)."""
    orders = {}
    for seed in SEEDS:
        modules = all_modules()
        random.Random(seed).shuffle(modules)
        orders[seed] = modules
    runs = {
        seed: subprocess.Popen(
            [sys.executable, "-c", IMPORT_ALL, *modules],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed, modules in orders.items()
    }
    failures = []
    for seed, run in runs.items():
        _, stderr = run.communicate(timeout=600)
        if run.returncode != 0:
            failures.append(f"seed {seed}, order {orders[seed]}:\n{stderr[-3000:]}")
    assert not failures, "\n\n".join(failures)
