"""``safegap calibrate`` (estimate a CMRM shift from anchors) and ``safegap generate`` (one reply,
optionally steered by a saved shift or by sample-level CMRM)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, cast

import typer

from safegap.cli.common import console, user_errors
from safegap.errors import finite_float
from safegap.selection import MAX_CAPABILITY_LOSS, MAX_OVER_REFUSAL_RISE

if TYPE_CHECKING:
    from safegap.steer.anchors import CorruptionKind
    from safegap.steer.calibrate import Estimator
    from safegap.steer.vector import Form

ANCHORS_HELP = (
    "Anchor set: a .txt file (one prompt per line), a .csv or .jsonl file with a prompt/text/question "
    "column and an optional image column (paths relative to the file), or "
    "organism:calibration[,kind=harmful|benign][,n=N][,world_seed=S]."
)


def calibrate_cmd(
    model: str = typer.Option(..., "--model", help="Local checkpoint directory or hub id."),
    anchors: str = typer.Option(..., "--anchors", help=ANCHORS_HELP),
    out: Path = typer.Option(..., "--out", help="Output .safetensors file."),
    corrupt: str = typer.Option("blank", "--corrupt", help="Meaningless image: blank (white) or noise."),
    estimator: str = typer.Option("mean", "--estimator", help="mean, pca or pca_centered."),
    read_at: str = typer.Option(
        "last", "--read-at", "--position", help="Where states are read: last, last:K or text."
    ),
    layers: str = typer.Option(
        "all", "--layers", help="Layers: all, N, A-B or a comma list (negatives from the last layer)."
    ),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Use only the first N anchors."),
    text_column: str | None = typer.Option(None, "--text-column", help="CSV/JSONL text field."),
    image_column: str | None = typer.Option(None, "--image-column", help="CSV/JSONL image field."),
    system: str | None = typer.Option(None, "--system", help="System prompt used for every anchor."),
    noise_seed: int = typer.Option(0, "--noise-seed"),
    diagnostics: bool = typer.Option(
        True, "--diagnostics/--no-diagnostics", help="Also read the original images for per-layer distances."
    ),
    layers_path: str | None = typer.Option(
        None, help="Dotted path to the decoder layers (unknown families)."
    ),
    dtype: str | None = typer.Option(
        None, "--dtype", help="float32, bfloat16, float16 (default: checkpoint's)."
    ),
    device: str | None = typer.Option(None, "--device"),
    tune_harmful: str | None = typer.Option(
        None,
        "--tune-harmful",
        help="Harmful prompts with images (an anchor spec, e.g. organism:calibration,kind=harmful) to "
        "choose alpha on; needs --tune-benign.",
    ),
    tune_benign: str | None = typer.Option(
        None,
        "--tune-benign",
        help="Benign prompts with images (an anchor spec, e.g. organism:calibration,kind=benign).",
    ),
    tune_capability: str | None = typer.Option(
        None,
        "--tune-capability",
        help="Capability benchmark the tuning also scores at each alpha (e.g. organism_vqa:n=1); "
        "without it, capability is not checked (the tuning record says so).",
    ),
    tune_capability_limit: int | None = typer.Option(
        None, "--tune-capability-limit", min=1, help="At most N samples of --tune-capability."
    ),
    tune_conditions: str = typer.Option(
        "image",
        "--tune-conditions",
        help="Image conditions the tuning prompts are asked under (comma list of image, blank_image, "
        "noise_image, text); the worst one counts.",
    ),
    max_over_refusal_rise: float = typer.Option(
        MAX_OVER_REFUSAL_RISE,
        "--max-over-refusal-rise",
        min=0.0,
        help="Tuning bound: worst-condition over-refusal allowed above alpha 0's.",
    ),
    max_capability_loss: float = typer.Option(
        MAX_CAPABILITY_LOSS,
        "--max-capability-loss",
        min=0.0,
        help="Tuning bound: capability loss allowed below alpha 0's (metric units; needs --tune-capability).",
    ),
) -> None:
    """Estimate a dataset-level CMRM shift (text-only minus corrupted image) and save it.

    With --tune-harmful/--tune-benign, alpha and the vector's form are chosen on those prompts by
    the frontier's rule (the largest harmful-refusal recovery over alpha 0 whose worst-condition
    over-refusal stays within --max-over-refusal-rise of alpha 0's and, with --tune-capability,
    whose capability loss is at most --max-capability-loss) and stored in the file, so
    `safegap generate --shift FILE`, `--defense cmrm:FILE` and `shift.apply()` all apply the
    vector as tuned."""
    from safegap.api import tune_shift
    from safegap.eval.capability import capability_check
    from safegap.eval.records import check_writable
    from safegap.models import load_vlm
    from safegap.specs import check_layers
    from safegap.steer.anchors import load_anchors
    from safegap.steer.calibrate import ESTIMATORS, calibrate, check_read_at
    from safegap.steer.sweep import Tune, check_conditions

    with user_errors():
        if corrupt not in ("blank", "noise"):
            raise ValueError(f"--corrupt {corrupt!r}: use blank or noise")
        if estimator not in ESTIMATORS:
            raise ValueError(f"--estimator {estimator!r}: use {', '.join(ESTIMATORS)}")
        check_read_at(read_at)
        layer_spec = check_layers(layers, "--layers")
        if out.suffix != ".safetensors":
            raise ValueError(f"--out {out}: the file name must end in .safetensors")
        check_writable(out)
        if (tune_harmful is None) != (tune_benign is None):
            raise ValueError("give both --tune-harmful and --tune-benign, or neither")
        if tune_harmful is None and (tune_capability is not None or tune_conditions != "image"):
            raise ValueError("--tune-capability and --tune-conditions need --tune-harmful and --tune-benign")
        items = load_anchors(anchors, text_column, image_column, limit)
        how = None
        if tune_harmful is not None and tune_benign is not None:
            how = Tune(
                load_anchors(tune_harmful, text_column, image_column),
                load_anchors(tune_benign, text_column, image_column),
                max_over_refusal_rise=max_over_refusal_rise,
                batch_size=batch_size,
                # built before the model loads: a bad spec fails in one line, not after calibration
                capability=(
                    capability_check(tune_capability, tune_capability_limit, model_path=model)
                    if tune_capability is not None
                    else None
                ),
                max_capability_loss=max_capability_loss,
                conditions=check_conditions(tune_conditions.split(",")),
            )
            from safegap.api import check_tuning_sets

            check_tuning_sets(how.harmful, how.benign, ("--tune-harmful", "--tune-benign"))  # type: ignore[arg-type]
        vlm = load_vlm(model, dtype=dtype, device=device, layers_path=layers_path)
        shift = calibrate(
            vlm,
            items,
            corrupt=cast("CorruptionKind", corrupt),
            estimator=cast("Estimator", estimator),
            read_at=read_at,
            layers=layer_spec,
            batch_size=batch_size,
            system=system,
            noise_seed=noise_seed,
            diagnostics=diagnostics,
            source=anchors,
        )
        if how is not None:
            tuning = tune_shift(vlm, shift, how, ("--tune-harmful", "--tune-benign"))
            shift.tuning = replace(
                tuning, chosen_by={**tuning.chosen_by, "harmful": tune_harmful, "benign": tune_benign}
            )
        shift.save(out)
    norms = shift.norms()
    summary = {
        "out": str(out),
        "anchors": shift.provenance.anchors_size,
        "layers": len(norms),
        "estimator": estimator,
        "corrupt": corrupt,
        "read_at": read_at,
        "norm_min": min(norms.values()),
        "norm_max": max(norms.values()),
        **({"alpha": shift.tuning.alpha, "form": shift.tuning.form} if shift.tuning else {}),
    }
    typer.echo(json.dumps(summary))


def generate_cmd(
    model: str = typer.Option(..., "--model", help="Local checkpoint directory or hub id."),
    prompt: str = typer.Option(..., "--prompt", help="The user message."),
    image: Path | None = typer.Option(None, "--image", help="Image file (omit for a text-only prompt)."),
    shift: Path | None = typer.Option(None, "--shift", help="A shift saved by `safegap calibrate`."),
    sample_level: bool = typer.Option(False, "--sample-level", help="Sample-level CMRM (no --shift)."),
    alpha: float | None = typer.Option(
        None, "--alpha", help="Steering strength (default: the shift's tuned alpha, else 1.0)."
    ),
    policy: str | None = typer.Option(
        None,
        "--policy",
        "--positions",
        help="Steering positions: last (the default, as the library), last+decode, prefill or all "
        "(default for --shift: the shift's tuned policy).",
    ),
    form: str | None = typer.Option(
        None, "--form", help="--shift: full or increments (default: the shift's tuned form)."
    ),
    corrupt: str = typer.Option("blank", "--corrupt", help="Sample-level: blank or noise."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", min=1),
    system: str | None = typer.Option(None, "--system"),
    layers_path: str | None = typer.Option(
        None, help="Dotted path to the decoder layers (unknown families)."
    ),
    dtype: str | None = typer.Option(None, "--dtype"),
    device: str | None = typer.Option(None, "--device"),
) -> None:
    """Print the model's greedy reply, optionally steered."""
    from safegap.data.benchmarks.base import open_image
    from safegap.models import load_vlm
    from safegap.models.generation import generate
    from safegap.steer.intervene import resolve_policy
    from safegap.steer.sample import generate_sample_level
    from safegap.steer.vector import FORMS, ShiftVector

    with user_errors():
        if alpha is not None:
            finite_float(alpha, "--alpha")
        if shift is not None and sample_level:
            raise ValueError("use either --shift or --sample-level, not both")
        if policy is not None:
            resolve_policy(policy)
        if form is not None and form not in FORMS:
            raise ValueError(f"--form {form!r}: use {' or '.join(FORMS)}")
        if corrupt not in ("blank", "noise"):
            raise ValueError(f"--corrupt {corrupt!r}: use blank or noise")
        picture = None
        if image is not None:
            if not image.is_file():
                raise FileNotFoundError(f"image not found: {image}")
            picture = open_image(image)
        vlm = load_vlm(model, dtype=dtype, device=device, layers_path=layers_path)
        images = [picture] if picture is not None else None
        if sample_level:
            reply = generate_sample_level(
                vlm,
                [prompt],
                images,
                alpha=1.0 if alpha is None else alpha,
                corrupt=cast("CorruptionKind", corrupt),
                policy=policy or "last",
                max_new_tokens=max_new_tokens,
                system=system,
            )[0]
        elif shift is not None:
            vector = ShiftVector.load(shift, vlm=vlm)
            with vector.apply(vlm, alpha=alpha, policy=policy, form=cast("Form | None", form)):
                reply = generate(vlm, [prompt], images, max_new_tokens=max_new_tokens, system=system)[0]
        else:
            reply = generate(vlm, [prompt], images, max_new_tokens=max_new_tokens, system=system)[0]
    if picture is None and (shift is not None or sample_level):
        console.print("note: the prompt has no image, so steering leaves it unchanged", highlight=False)
    typer.echo(reply)


def register(app: typer.Typer) -> None:
    app.command("calibrate")(calibrate_cmd)
    app.command("generate")(generate_cmd)
