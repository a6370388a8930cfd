"""The demo's ``frontier`` step: the safety-utility frontier of the seed's organism.

It runs ``safegap frontier`` (:mod:`safegap.cli.frontier`) with safety = the organism benchmark
(``text`` and ``benign_image``), utility = ``organism_vqa`` (x: its accuracy; where a point
lacks it, worst-condition over-refusal), and the defenses none, cmrm (a fresh untuned shift from
the calibration split, at every alpha of :data:`ALPHAS`), cmrm_sample, vlm_guard and
refusal_direction (their directions from the calibration split). Kept small for two cores:
:data:`LIMIT` samples per benchmark, a three-value alpha grid, short replies.

Files under ``OUT/frontier/``: ``shift.safetensors``, ``frontier.json``, ``frontier.png``,
``report.html`` (the run's report with the frontier first) and the run in ``run/``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from safegap.cli.common import console
from safegap.selection import MAX_CAPABILITY_LOSS, MAX_OVER_REFUSAL_RISE

if TYPE_CHECKING:
    from safegap.cli.demo import DemoContext

ALPHAS = "0.5,1,2"
LIMIT = 8
PEER_SOURCE = "organism:calibration,n=8"
CONDITIONS = ("text", "benign_image")


def defenses(shift: Path) -> list[str]:
    """The frontier's defense specs (strengths left to the alpha grid)."""
    return [
        f"cmrm:{shift.resolve()}",
        "cmrm_sample",
        f"vlm_guard:{PEER_SOURCE}",
        f"refusal_direction:{PEER_SOURCE}",
    ]


def run_frontier_step(ctx: DemoContext) -> None:
    from safegap.api import calibrate
    from safegap.cli.frontier import frontier_command
    from safegap.models import load_vlm

    path = ctx.organism_path("frontier")
    root = ctx.out / "frontier"
    if (root / "run").exists():  # a fresh run each time, as the cmrm step (a rebuilt organism)
        shutil.rmtree(root / "run")
    root.mkdir(parents=True, exist_ok=True)
    with console.status("calibrating an untuned CMRM shift for the alpha grid"):
        shift = calibrate(load_vlm(path), "organism:calibration")
        shift_path = Path(shift.save(root / "shift.safetensors"))
    frontier_command(
        model=str(path),
        safety=["organism"],
        utility=["organism_vqa:n=1"],
        defense=defenses(shift_path),
        out=str(root),
        alpha_grid=ALPHAS,
        condition=list(CONDITIONS),
        judge="refusal",
        x_axis="auto",
        capability_metric=None,
        max_capability_loss=MAX_CAPABILITY_LOSS,
        max_over_refusal_rise=MAX_OVER_REFUSAL_RISE,
        limit=LIMIT,
        batch_size=32,
        max_new_tokens=12,
        data_dir=None,
        dtype=None,
        device=None,
        resume=False,
        quiet=True,
    )
    data = json.loads((root / "frontier.json").read_text(encoding="utf-8"))
    ctx.state["frontier"] = str(root / "frontier.json")
    chosen = data["selection"]["all"]
    console.print(
        f"frontier of seed {ctx.seed}: {len(data['points'])} points, {len(data['pareto'])} on the "
        f"Pareto front; the rule picks {chosen['chosen']} (recovery {chosen['recovery']:+.2f})",
        highlight=False,
    )
