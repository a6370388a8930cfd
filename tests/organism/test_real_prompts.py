"""The organism's minimal loaders of real benchmark prompts (shared data folder)."""

from __future__ import annotations

from pathlib import Path

import pytest

from safegap.organism.real_prompts import (
    advbench_goals,
    data_dir,
    figstep_questions,
    spread,
    xstest_safe_prompts,
)

pytestmark = pytest.mark.skipif(
    not (data_dir() / "advbench").is_dir(), reason="shared data folder not present"
)


def test_counts_match_the_benchmarks() -> None:
    assert len(advbench_goals()) == 520
    assert len(figstep_questions()) == 500
    safe = xstest_safe_prompts()
    assert len(safe) == 250 and all(p.strip() for p in safe)


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="harmful_behaviors.csv not found"):
        advbench_goals(tmp_path)


def test_spread_is_even_and_ordered() -> None:
    items = [str(i) for i in range(100)]
    assert spread(items, 4) == ["0", "25", "50", "75"]
    assert spread(items[:3], 10) == items[:3]
