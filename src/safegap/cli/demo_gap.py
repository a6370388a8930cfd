"""The demo's ``gap`` step: modality gap and safety band of the organism after stage 2.

On the after-stage-2 snapshot of the organism the degradation step built
(``ctx.state["organism_path"]``/stages/after_stage2: projector trained, LLM still the text-aligned
one), the step measures MIR for image tokens (a benign scene) against the text-filler control (the
image replaced by neutral text of the same token length), and localises the safety band with the
refusal-token logit lens and the layer-skip check (:func:`safegap.organism.diagnostics.measure_checkpoint`).

Files under ``OUT/gap/``: ``gap_benign_image/gap.json`` (with the semantic shift) and
``gap_text_filler/gap.json`` with their figures, ``layers/layers.json`` and ``safety_band.png``,
``gap.json`` (the step's summary) and ``fd_image_vs_filler.png``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.table import Table

from safegap.cli.common import console

if TYPE_CHECKING:
    from safegap.cli.demo import DemoContext

#: The gap conditions the demo compares.
CONDITIONS = ("benign_image", "text_filler")
#: The organism checkpoint the step measures (where the degradation appears with the LLM frozen).
STAGE = "after_stage2"


def gap_table(summary: dict[str, Any]) -> Table:
    """MIR and per-layer FD per condition, as the step prints it."""
    table = Table(title=f"modality gap, organism seed {summary['seed']} {STAGE}")
    for column in ("condition", "MIR", "FD per layer"):
        table.add_column(column, no_wrap=True)
    for condition, entry in summary["gap"].items():
        table.add_row(condition, f"{entry['mir']:.3f}", " ".join(f"{v:.2f}" for v in entry["fd"]))
    return table


def band_lines(summary: dict[str, Any]) -> list[str]:
    """The image-minus-filler MIR, the safety band and the refusal it leads to, one fact a line."""
    band = summary["layers"]["safety_band"]
    lens = summary["layers"]["conditions"]
    lines = [
        f"MIR, image minus text filler: {summary['mir_minus_filler']['benign_image']:+.3f}",
        f"safety band (logit lens, harmful text): layers {band['layers'] if band else 'not found'}",
    ]
    for name in ("harmful_text", "harmful_text_image", "benign_text"):
        curve = " ".join(f"{p:.2f}" for p in lens[name]["refusal_prob_mean"])
        lines.append(f"P(refusal) per layer, {name}: {curve}")
    skip = summary["layers"].get("layer_skip")
    if skip:
        cells = " ".join(f"{row['harmful_refusal_prob']:.2f}" for row in skip["skipped"])
        lines.append(f"harmful-text refusal with layer 0, 1, ... skipped: {cells}")
    return lines


def run_gap_step(ctx: DemoContext) -> None:
    from safegap.gap.plots import plot_layer_curves
    from safegap.gap.report import write_json_atomic
    from safegap.models import load_vlm
    from safegap.organism.build import make_world
    from safegap.organism.config import OrganismConfig
    from safegap.organism.diagnostics import measure_checkpoint, organism_records, stage_checkpoint

    checkpoint = stage_checkpoint(ctx.organism_path("gap"), STAGE)
    root = ctx.out / "gap"
    vlm = load_vlm(checkpoint)
    records = organism_records(make_world(OrganismConfig()), "eval", ctx.n_prompts)
    with console.status(f"gap and safety band on {checkpoint}"):
        result = measure_checkpoint(vlm, records, CONDITIONS, out_dir=root, seed=ctx.seed)
    summary = {"seed": ctx.seed, "checkpoint": str(checkpoint), "records": len(records), **result}
    layers = result["layers"]["layers"]
    fd = {c: [result["gap"][c]["fd"]] for c in CONDITIONS}
    figure = plot_layer_curves(
        layers, fd, root / "fd_image_vs_filler.png", "Fréchet distance (MIR layer term)", STAGE, log=True
    )
    summary["figures"] = [figure.name]
    write_json_atomic(root / "gap.json", summary)
    ctx.state["gap"] = summary
    console.print(gap_table(summary))
    for line in band_lines(summary):
        console.print(line)
