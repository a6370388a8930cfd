"""The organism's two training regimes (issue 12, premise 4).

* ``full``: stages 0-3, today's recipe: the LLM is tuned with images in stage 3 (visual
  instruction tuning), so data can write "with an image, answer" into it.
* ``projector``: stages 0-2 only: the LLM is never tuned with images; whatever safety is lost
  next to an image is lost through the representation the projector feeds it (the modality gap
  ReGap and TGA are about).

A ``projector``-regime organism is the after-stage-2 checkpoint of the same build (the stages
are deterministic per seed, so it is exactly what a stages-0-2 build writes).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from safegap.organism.names import parse_names

REGIMES: tuple[str, ...] = ("projector", "full")


def parse_regimes(spec: str | Sequence[str]) -> list[str]:
    """``"projector,full"`` -> ["projector", "full"]; unknown names are a one-line error."""
    return parse_names(spec, REGIMES, "regime")


def regime_checkpoint(build_dir: str | Path, regime: str) -> Path:
    """The checkpoint directory of ``regime`` inside one organism build (built with snapshots)."""
    root = Path(build_dir)
    if regime == "full":
        return root
    if regime == "projector":
        path = root / "stages" / "after_stage2"
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{root}: no stages/after_stage2 snapshot (build with snapshots)")
        return path
    raise ValueError(f"unknown regime {regime!r}; known: {', '.join(REGIMES)}")
