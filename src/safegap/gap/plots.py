"""PNG figures for the diagnostics (matplotlib's Agg canvas; no pyplot, no global backend state)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

CONDITION_COLOURS = {
    "original": "tab:red",
    "blank_image": "tab:orange",
    "noise_image": "tab:purple",
    "caption_text": "tab:green",
    "query_only": "tab:blue",
    "harmful_text": "tab:red",
    "harmful_text_image": "tab:orange",
    "benign_text": "tab:blue",
    "benign_image": "tab:red",
    "text_filler": "tab:green",
}


def _save(fig: Figure, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    for ax in fig.axes:
        if ax.get_xlabel() == "decoder layer":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    return out


def plot_gap_layers(per_layer: Sequence[Mapping[str, Any]], path: str | Path, title: str = "") -> Path:
    """Per-layer Fréchet distance (MIR terms) and centroid gaps."""
    layers = [row["layer"] for row in per_layer]
    fig = Figure(figsize=(10, 4))
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    left.plot(layers, [row["fd"] for row in per_layer], marker="o", label="Fréchet distance (MIR layer term)")
    left.plot(
        layers, [row["fd_reference_fast"] for row in per_layer], ls="--", label="official 'fast' formula"
    )
    left.plot(layers, [row["mean_term"] for row in per_layer], ls=":", label="mean term")
    left.set_yscale("symlog", linthresh=1e-3)
    left.set_xlabel("decoder layer")
    left.set_ylabel("text-centric FD")
    left.legend(fontsize=8)
    right.plot(
        layers, [row["centroid_l2"] for row in per_layer], marker="o", label="centroid gap (L2-normalised)"
    )
    right.plot(
        layers,
        [row["centroid_text_centric"] for row in per_layer],
        marker="s",
        label="centroid gap (text-centric)",
    )
    right.set_xlabel("decoder layer")
    right.set_ylabel("distance")
    right.legend(fontsize=8)
    fig.suptitle(title or "modality gap per layer")
    return _save(fig, path)


def plot_safety_band(
    layers: Sequence[int], conditions: Mapping[str, Mapping[str, Any]], path: str | Path, title: str = ""
) -> Path:
    """Refusal-token probability per layer for each condition, with each condition's median band."""
    fig = Figure(figsize=(10, 4))
    prob_ax, ratio_ax = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for name, c in conditions.items():
        colour = CONDITION_COLOURS.get(name)
        prob_ax.plot(layers, c["refusal_prob_mean"], marker="o", color=colour, label=name)
        ratio = [v if v is not None else float("nan") for v in c["log_ratio_mean"]]
        ratio_ax.plot(layers, ratio, marker="o", color=colour, label=name)
        start, end = c["start"]["median"], c["end"]["median"]
        if start is not None:
            prob_ax.axvspan(start, end if end is not None else start, color=colour, alpha=0.12)
    prob_ax.set_yscale("log")
    prob_ax.set_xlabel("decoder layer")
    prob_ax.set_ylabel("P(refusal tokens), logit lens")
    prob_ax.legend(fontsize=8)
    ratio_ax.axhline(0, color="grey", lw=0.5)
    ratio_ax.set_xlabel("decoder layer")
    ratio_ax.set_ylabel("log P^j / P^(j-1)")
    fig.suptitle(title or "safety-layer localisation (shaded: median band)")
    return _save(fig, path)


def plot_semantic_shift(shift: Mapping[str, Any], path: str | Path, title: str = "") -> Path:
    layers = shift["layers"]
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(layers, shift["matched_cosine"], marker="o", label="image vs its caption")
    ax.plot(layers, shift["mismatched_cosine"], marker="s", label="image vs other captions")
    ax.plot(layers, shift["retrieval_accuracy"], ls="--", label="caption retrieval accuracy")
    ax.axhline(shift["chance_retrieval"], color="grey", lw=0.5, ls=":")
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("cosine / accuracy")
    ax.legend(fontsize=8)
    ax.set_title(title or "semantic shift (TGA)")
    return _save(fig, path)


def plot_condition_distances(
    layers: Sequence[int],
    distances: Mapping[str, Mapping[str, Sequence[float]]],
    path: str | Path,
    title: str = "",
) -> Path:
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot(1, 1, 1)
    for name, d in distances.items():
        ax.plot(layers, d["paired_l2_relative"], marker="o", color=CONDITION_COLOURS.get(name), label=name)
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("||h - h_query|| / mean ||h_query||")
    ax.legend(fontsize=8)
    ax.set_title(title or "distance to query-only, last prompt token (CMRM)")
    return _save(fig, path)


def plot_pca(pca: Mapping[str, Any], path: str | Path, title: str = "") -> Path:
    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot(1, 1, 1)
    for name, coords in pca["coords"].items():
        if coords:
            xs, ys = zip(*coords, strict=True)
            ax.scatter(xs, ys, s=14, alpha=0.8, color=CONDITION_COLOURS.get(name), label=name)
    ratio = pca["explained_variance_ratio"]
    ax.set_xlabel(f"PC1 ({ratio[0]:.0%})")
    ax.set_ylabel(f"PC2 ({ratio[1]:.0%})" if len(ratio) > 1 else "PC2")
    ax.legend(fontsize=8)
    ax.set_title(title or f"five conditions, layer {pca['layer']}")
    return _save(fig, path)


def plot_correlation(
    points: Sequence[Mapping[str, Any]], path: str | Path, metric_label: str, subtitle: str = ""
) -> Path:
    fig = Figure(figsize=(6, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    xs = [p["metric"] for p in points]
    ys = [p["unsafe_rate"] for p in points]
    ax.scatter(xs, ys)
    for p in points:
        ax.annotate(
            p["label"], (p["metric"], p["unsafe_rate"]), fontsize=7, xytext=(3, 3), textcoords="offset points"
        )
    ax.set_xlabel(metric_label)
    ax.set_ylabel("unsafe rate")
    ax.set_title(subtitle or "gap vs unsafe rate")
    return _save(fig, path)


def plot_layer_curves(
    layers: Sequence[int],
    curves: Mapping[str, Sequence[Sequence[float]]],
    path: str | Path,
    ylabel: str,
    title: str = "",
    log: bool = False,
) -> Path:
    """Per-layer curves of several conditions over repeats (e.g. seeds): the mean line with a
    min-max band per condition. ``curves[name]`` is one per-layer list per repeat."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot(1, 1, 1)
    for name, runs in curves.items():
        if not runs:
            continue
        columns = list(zip(*runs, strict=True))
        mean = [sum(c) / len(c) for c in columns]
        ax.plot(layers, mean, marker="o", color=CONDITION_COLOURS.get(name), label=f"{name} (n={len(runs)})")
        if len(runs) > 1:
            ax.fill_between(
                layers,
                [min(c) for c in columns],
                [max(c) for c in columns],
                color=CONDITION_COLOURS.get(name),
                alpha=0.15,
            )
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("decoder layer")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.set_title(title)
    return _save(fig, path)
