"""``safegap gap``, ``safegap layers`` and ``safegap correlate``: the diagnostics of
:mod:`safegap.gap` (definitions and output schemas in docs/diagnostics.md)."""

from __future__ import annotations

from pathlib import Path

import typer

from safegap.cli.common import console, fail, user_errors
from safegap.specs import check_layers, resolve_layers


def _load(model: str, dtype: str | None, device: str | None, layers_path: str | None):  # type: ignore[no-untyped-def]
    from safegap.models import load_vlm

    return load_vlm(model, dtype=dtype, device=device, layers_path=layers_path)


def gap(
    model: str = typer.Option(..., "--model", help="Checkpoint directory or hub id."),
    data: str = typer.Option(
        ..., "--data", help="JSONL/JSON/CSV of prompt,image[,caption] or a data source (e.g. organism)."
    ),
    out: Path = typer.Option(..., "--out", help="Output directory for gap.json and figures."),
    layers: str = typer.Option(
        "all", help="Layers: all, N, A-B or a comma list (negatives from the last layer)."
    ),
    batch_size: int = typer.Option(8, min=1),
    max_samples: int | None = typer.Option(None, min=1, help="Use only the first N records."),
    probe_layer: int | None = typer.Option(
        None, help="Layer of the linear probe (default: the middle layer)."
    ),
    no_probe: bool = typer.Option(False, "--no-probe", help="Skip the linear probe."),
    no_outliers: bool = typer.Option(
        False, "--no-outliers", help="Skip MIR's 3-sigma outlier step (one pass)."
    ),
    text_span: str = typer.Option("after_image", help="Text tokens: 'after_image' (MIR) or 'all'."),
    pca_layers: str | None = typer.Option(
        None, help="Layers for the five-condition PCA (same grammar as --layers)."
    ),
    skip_shift: bool = typer.Option(False, help="Skip the semantic shift (needs captions)."),
    skip_conditions: bool = typer.Option(False, help="Skip CMRM's five conditions."),
    system: str | None = typer.Option(None, help="System prompt."),
    dtype: str | None = typer.Option(None, help="Model dtype (e.g. bfloat16); default: the checkpoint's."),
    device: str | None = typer.Option(None, help="Device (e.g. cuda); default: CPU."),
    layers_path: str | None = typer.Option(
        None, help="Dotted path to the decoder layers (unknown families)."
    ),
    accumulate_device: str = typer.Option(
        "cpu", help="Device of the float64 moment accumulators (e.g. cuda)."
    ),
    gemm_float32: bool = typer.Option(
        False, help="float32 chunk products into float64 sums (faster on CPU)."
    ),
    label: str | None = typer.Option(
        None, help="Name of this result (e.g. checkpoint/condition) for correlate."
    ),
    seed: int = typer.Option(0),
) -> None:
    """Modality gap per layer: MIR, centroid gap, probe, semantic shift, five conditions."""
    import torch

    from safegap.gap.data import resolve_data
    from safegap.gap.report import run_gap

    with user_errors():
        check_layers(layers, "--layers")
        if pca_layers is not None:
            check_layers(pca_layers, "--pca-layers")
        records = resolve_data(data)
        if max_samples is not None:
            records = records[:max_samples]
        vlm = _load(model, dtype, device, layers_path)
        probe: int | str | None = None if no_probe else (probe_layer if probe_layer is not None else "middle")
        report = run_gap(
            vlm,
            records,
            out,
            layers,
            batch_size,
            not no_outliers,
            probe,
            text_span,
            None
            if pca_layers is None
            else resolve_layers(pca_layers, vlm.adapter.num_layers, "--pca-layers"),
            not skip_shift,
            not skip_conditions,
            system,
            data,
            seed,
            label=label,
            accumulate_device=accumulate_device,
            gemm_dtype=torch.float32 if gemm_float32 else torch.float64,
        )
    console.print(
        f"MIR {report['mir']['total']} over {len(report['per_layer'])} layers; wrote {out / 'gap.json'}"
    )


def layers(
    model: str = typer.Option(..., "--model", help="Checkpoint directory or hub id."),
    out: Path = typer.Option(..., "--out", help="Output directory for layers.json and safety_band.png."),
    data: str | None = typer.Option(
        None, "--data", help="Prompts with a harmful/benign label (default: built-in set)."
    ),
    refusal_phrase: list[str] | None = typer.Option(
        None, "--refusal-phrase", help="Refusal phrase (repeatable)."
    ),
    top_k: int = typer.Option(5, min=1, help="Band start: a refusal token in the top-k of the change."),
    criterion: str = typer.Option("prob_diff", help="'prob_diff' (TGA code) or 'log_ratio' (TGA paper)."),
    image: str = typer.Option("blank", help="Image for harmful prompts without one: 'blank' or 'noise'."),
    batch_size: int = typer.Option(8, min=1),
    system: str | None = typer.Option(None, help="System prompt."),
    dtype: str | None = typer.Option(None),
    device: str | None = typer.Option(None),
    layers_path: str | None = typer.Option(None),
    seed: int = typer.Option(0),
    layer_skip: bool = typer.Option(
        False, "--layer-skip", help="Also skip each layer in turn and re-read the first-token refusal."
    ),
) -> None:
    """Safety-layer localisation: refusal-token logit lens per layer for harmful, harmful+image, benign
    (a text-only causal LM or a .gguf file: harmful and benign text only)."""
    from safegap.data.images import blank_image, noise_image
    from safegap.gap.data import resolve_data
    from safegap.gap.layers import DEFAULT_REFUSAL_PHRASES
    from safegap.gap.report import run_layers

    with user_errors():
        harmful = benign = images = None
        if data is not None:
            records = resolve_data(data)
            harmful_records = [r for r in records if r.is_harmful]
            benign_list = [r.prompt for r in records if not r.is_harmful]
            if not harmful_records:
                raise ValueError(f"data {data!r} has no harmful prompts")
            harmful = [r.prompt for r in harmful_records]
            benign = benign_list or None
            if any(r.image is not None for r in harmful_records):
                if image not in ("blank", "noise"):
                    raise ValueError(f"--image must be 'blank' or 'noise', got {image!r}")
                images = [
                    r.load_image() or (blank_image() if image == "blank" else noise_image(seed=seed + i))
                    for i, r in enumerate(harmful_records)
                ]
        vlm = _load(model, dtype, device, layers_path)
        if images is not None and not vlm.adapter.takes_images:
            console.print(f"{model} is a text-only model: the records' images are not used")
            images = None
        report = run_layers(
            vlm,
            out,
            harmful,
            benign,
            images,
            image,
            refusal_phrase or DEFAULT_REFUSAL_PHRASES,
            top_k,
            criterion,
            batch_size,
            system,
            data,
            seed,
            layer_skip,
        )
    band = report["safety_band"]
    console.print(f"safety band (harmful text): {band['layers'] if band else 'not found'}")
    for name, c in report["conditions"].items():
        console.print(
            f"{name}: band start {c['start']['median']}, end {c['end']['median']} "
            f"({c['start']['found']}/{c['start']['of']} prompts)"
        )
    skip = report["layer_skip"]
    if skip:
        base = skip["baseline"]["harmful_refusal_prob"]
        drops = ", ".join(f"{r['layer']}: {base - r['harmful_refusal_prob']:+.2f}" for r in skip["skipped"])
        console.print(f"harmful first-token refusal {base:.2f}; drop when a layer is skipped: {drops}")


def correlate_cmd(
    results: list[str] = typer.Argument(..., help="GAP_JSON or GAP_JSON:UNSAFE (a number or a JSON file)."),
    out: Path = typer.Option(..., "--out", help="Output directory for correlate.json and correlate.png."),
    metric: str = typer.Option("mir.total", help="Dotted key of the gap metric."),
    unsafe_key: str = typer.Option("unsafe_rate", help="Dotted key of the unsafe rate."),
    n_boot: int = typer.Option(2000, min=100),
    seed: int = typer.Option(0),
) -> None:
    """Pearson and Spearman (bootstrap 95% CIs) between a gap metric and the unsafe rate."""
    from safegap.gap.report import run_correlate

    with user_errors():
        report = run_correlate(results, out, metric, unsafe_key, n_boot, seed)
    p, s = report["pearson"], report["spearman"]
    if p["r"] is None:
        raise fail("the metric or the unsafe rate is constant across results; no correlation")
    console.print(
        f"n={report['n']}  Pearson r={p['r']:.3f} CI {p['ci']}  Spearman rho={s['r']:.3f} CI {s['ci']}"
    )


def register(app: typer.Typer) -> None:
    app.command("gap")(gap)
    app.command("layers")(layers)
    app.command("correlate")(correlate_cmd)
