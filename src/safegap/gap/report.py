"""One call per diagnostic that computes, writes ``*.json`` (schema in docs/diagnostics.md) and the
PNG figures, and returns the JSON object. The command line is a thin wrapper around these; a
Python script can call them directly (or the lower-level functions they use)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import safegap
from safegap.files import write_text_atomic
from safegap.gap import plots
from safegap.gap.collect import SpanFn, image_text_spans, measure_gap
from safegap.gap.correlate import correlate, load_point
from safegap.gap.data import GapRecord
from safegap.gap.layers import (
    DEFAULT_REFUSAL_PHRASES,
    layer_skip_refusal,
    localise_safety_layers,
    refusal_token_ids,
)
from safegap.gap.shift import five_conditions, semantic_shift
from safegap.models.loading import VLM
from safegap.specs import Layers, resolve_layers

GAP_SCHEMA = "safegap.gap/1"
LAYERS_SCHEMA = "safegap.layers/1"
CORRELATE_SCHEMA = "safegap.correlate/1"


def json_safe(value: Any) -> Any:
    """NaN/inf become null, tensors and tuples become lists, so the file is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, torch.Tensor):
        return json_safe(value.tolist())
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as JSON via a temporary file and a rename, so readers never see half a file."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, json.dumps(json_safe(obj), indent=2, allow_nan=False) + "\n")
    return out


def _provenance() -> dict[str, Any]:
    return {"safegap": safegap.__version__, "torch": torch.__version__}


def run_gap(
    vlm: VLM,
    records: Sequence[GapRecord],
    out_dir: str | Path,
    layers: Layers = "all",
    batch_size: int = 8,
    outliers: bool = True,
    probe_layer: int | str | None = "middle",
    text_span: str = "after_image",
    pca_layers: Sequence[int] | None = None,
    shift: bool = True,
    conditions: bool = True,
    system: str | None = None,
    data_spec: str | None = None,
    seed: int = 0,
    final_norm_last: bool = True,
    label: str | None = None,
    spans: SpanFn | None = None,
    accumulate_device: str | torch.device = "cpu",
    gemm_dtype: torch.dtype = torch.float64,
    mir_mode: str = "exact",
) -> dict[str, Any]:
    """Modality gap per layer (MIR, centroid, probe), semantic shift and five conditions; writes
    ``gap.json`` and figures to ``out_dir``. Shift needs captions on every record; the five
    conditions run with or without captions (the caption condition only with). ``mir_mode``:
    ``"exact"`` (three model passes; the report's default so far, what ``safegap gap`` writes)
    or ``"fast"`` (one pass; see :mod:`safegap.gap.onepass`).

    ``spans`` replaces the image-vs-text token sets (e.g. :func:`substring_text_spans` for a text
    filler standing where the image would be); records then need no image, and shift and
    conditions, which are about images, should be turned off."""
    out = Path(out_dir)
    wanted = resolve_layers(layers, vlm.adapter.num_layers)
    if spans is None:
        for i, r in enumerate(records):
            if r.image is None:
                raise ValueError(f"record {r.id or i}: the modality gap needs an image on every record")
    result = measure_gap(
        vlm,
        records,
        wanted,
        batch_size,
        spans or image_text_spans(text_span),
        outliers,
        probe_layer,
        system=system,
        final_norm_last=final_norm_last,
        seed=seed,
        device=accumulate_device,
        gemm_dtype=gemm_dtype,
        mode=mir_mode,
    )
    report: dict[str, Any] = {
        "schema": GAP_SCHEMA,
        "label": label,
        "model": vlm.fingerprint(),
        "settings": {
            "layers": wanted,
            "batch_size": batch_size,
            "outlier_replacement": outliers,
            "probe_layer": result.probe_layer,
            "text_span": text_span if spans is None else "custom",
            "system": system,
            "seed": seed,
            "final_norm_last": final_norm_last,
            "accumulate_device": str(accumulate_device),
            "gemm_dtype": str(gemm_dtype).replace("torch.", ""),
            "mir_mode": mir_mode,
            "layer_convention": "decoder layer output k = HF hidden_states[k+1]",
            **_provenance(),
        },
        "data": {
            "spec": data_spec,
            "records": len(records),
            "captions": sum(1 for r in records if r.caption),
            "image_tokens": result.layers[0].image_tokens,
            "text_tokens": result.layers[0].text_tokens,
        },
        **result.as_dict(),
        "semantic_shift": None,
        "five_conditions": None,
        "figures": [],
    }
    figures = [
        plots.plot_gap_layers(
            report["per_layer"],
            out / "gap_layers.png",
            f"{Path(vlm.name_or_path).name}: MIR {result.mir:.3f}",
        )
    ]
    has_captions = all(r.caption for r in records)
    if shift and has_captions and len(records) >= 2:
        shift_result = semantic_shift(vlm, records, wanted, batch_size, system).as_dict()
        report["semantic_shift"] = shift_result
        figures.append(plots.plot_semantic_shift(shift_result, out / "semantic_shift.png"))
    if conditions:
        five = five_conditions(
            vlm, records, wanted, pca_layers, batch_size, system, noise_seed=seed
        ).as_dict()
        report["five_conditions"] = five
        figures.append(
            plots.plot_condition_distances(
                wanted, five["distance_to_query_only"], out / "conditions_distance.png"
            )
        )
        for pca in five["pca"]:
            figures.append(plots.plot_pca(pca, out / f"conditions_pca_layer{pca['layer']}.png"))
    report["figures"] = [f.name for f in figures]
    write_json_atomic(out / "gap.json", report)
    return json_safe(report)  # type: ignore[no-any-return]


def run_layers(
    vlm: VLM,
    out_dir: str | Path,
    harmful: Sequence[str] | None = None,
    benign: Sequence[str] | None = None,
    harmful_images: Sequence[Any] | None = None,
    image: str = "blank",
    phrases: Sequence[str] = DEFAULT_REFUSAL_PHRASES,
    top_k: int = 5,
    criterion: str = "prob_diff",
    batch_size: int = 8,
    system: str | None = None,
    data_spec: str | None = None,
    seed: int = 0,
    layer_skip: bool = False,
) -> dict[str, Any]:
    """Safety-layer localisation; writes ``layers.json`` and ``safety_band.png``. With
    ``layer_skip``, also the causal check (:func:`layer_skip_refusal`) on the same text prompts."""
    from safegap.gap.layers import BENIGN_PROMPTS, HARMFUL_PROMPTS

    out = Path(out_dir)
    harmful_prompts = list(harmful) if harmful else list(HARMFUL_PROMPTS)
    benign_prompts = list(benign) if benign else list(BENIGN_PROMPTS)
    found = localise_safety_layers(
        vlm,
        harmful_prompts,
        benign_prompts,
        harmful_images,
        image,
        phrases,
        top_k,
        criterion,
        batch_size,
        system,
        seed,
    )
    body = found.as_dict()
    report: dict[str, Any] = {
        "schema": LAYERS_SCHEMA,
        "model": vlm.fingerprint(),
        "settings": {
            **found.settings,
            "batch_size": batch_size,
            "data_spec": data_spec,
            "harmful_source": "data" if harmful else "built-in",
            "benign_source": "data" if benign else "built-in",
            "harmful_images": "data" if harmful_images is not None else found.settings["image"],
            **_provenance(),
        },
        **body,
        "layer_skip": None,
    }
    if layer_skip:
        ids = list(refusal_token_ids(vlm.tokenizer, phrases))
        skip = layer_skip_refusal(vlm, harmful_prompts, benign_prompts, ids, batch_size, system)
        report["layer_skip"] = skip.as_dict()
    figure = plots.plot_safety_band(
        body["layers"],
        body["conditions"],
        out / "safety_band.png",
        f"{Path(vlm.name_or_path).name}: safety-layer localisation",
    )
    report["figures"] = [figure.name]
    write_json_atomic(out / "layers.json", report)
    return json_safe(report)  # type: ignore[no-any-return]


def run_correlate(
    results: Sequence[str],
    out_dir: str | Path,
    metric_key: str = "mir.total",
    unsafe_key: str = "unsafe_rate",
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Correlation of a gap metric with the unsafe rate; writes ``correlate.json`` and ``correlate.png``."""
    out = Path(out_dir)
    points = [load_point(arg, metric_key, unsafe_key) for arg in results]
    found = correlate(points, n_boot=n_boot, seed=seed, metric_key=metric_key, unsafe_key=unsafe_key)
    report: dict[str, Any] = {"schema": CORRELATE_SCHEMA, "settings": _provenance(), **found.as_dict()}
    p, s = found.pearson, found.spearman
    subtitle = f"Pearson r={p.r:.2f} [{p.ci[0]:.2f}, {p.ci[1]:.2f}], Spearman {s.r:.2f} [{s.ci[0]:.2f}, {s.ci[1]:.2f}]"
    figure = plots.plot_correlation(report["points"], out / "correlate.png", metric_key, subtitle)
    report["figures"] = [figure.name]
    write_json_atomic(out / "correlate.json", report)
    return json_safe(report)  # type: ignore[no-any-return]
