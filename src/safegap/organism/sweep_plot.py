"""``sweep.png``: harmful refusal with a benign image against MIR, one panel per regime and one
colour per lambda, Spearman r [CI] in each title (the form of the ReGap paper's figure)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safegap.files import atomic_path


def plot_sweep(result: dict[str, Any], path: str | Path, target: str, x: str = "mir") -> Path:
    """``target`` (a point's refusal measure) against gap measure ``x``; the sweep passes its
    ``TARGET`` (so this module does not import the sweep back)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regimes = list(result["regimes"]) or ["-"]
    lambdas = list(result["lambdas"])
    colours = plt.get_cmap("viridis")
    fig, axes = plt.subplots(1, len(regimes), figsize=(4.8 * len(regimes), 4.2), squeeze=False)
    for ax, regime in zip(axes[0], regimes, strict=True):
        for k, lam in enumerate(lambdas):
            rows = [p for p in result["points"] if p["regime"] == regime and p["lambda"] == lam]
            if rows:
                ax.scatter(
                    [p[x] for p in rows],
                    [p[target] for p in rows],
                    color=colours(k / max(len(lambdas) - 1, 1)),
                    label=f"λ={lam:g}",
                    s=36,
                    edgecolor="black",
                    linewidth=0.4,
                )
        entry = result.get("correlations", {}).get(regime, {}).get(x, {})
        r, ci = entry.get("spearman"), entry.get("ci")
        title = f"{regime}: Spearman r = " + ("n/a" if r is None else f"{r:+.2f}")
        if ci is not None:
            title += f" [{ci[0]:+.2f}, {ci[1]:+.2f}]"
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("MIR (summed over layers)" if x == "mir" else x)
        ax.set_ylabel("harmful refusal, benign image")
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(path)
    try:
        with atomic_path(out) as tmp:
            fig.savefig(tmp, dpi=120, format=out.suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)
    return out
