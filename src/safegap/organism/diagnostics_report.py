"""What ``safegap organism diagnose`` writes for people: the figures and ``diagnose.md``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safegap.organism.diagnostics_aggregate import unsafe_proxy


def write_figures(result: dict[str, Any], out: Path) -> list[str]:
    """Per stage: per-layer FD of each gap condition and the lens's refusal probability per
    condition, mean over seeds with the min-max band."""
    from safegap.gap.plots import plot_correlation, plot_layer_curves

    names = []
    for stage in result["stages"]:
        runs = [result["per_seed"][str(s)][stage] for s in result["seeds"]]
        layers = runs[0]["layers"]["layers"]
        fd = {c: [r["gap"][c]["fd"] for r in runs] for c in runs[0]["gap"]}
        names.append(
            plot_layer_curves(
                layers,
                fd,
                out / f"fd_{stage}.png",
                "Fréchet distance (MIR layer term)",
                f"{stage}: modality gap",
                log=True,
            ).name
        )
        lens = {
            c: [r["layers"]["conditions"][c]["refusal_prob_mean"] for r in runs]
            for c in runs[0]["layers"]["conditions"]
        }
        names.append(
            plot_layer_curves(
                layers,
                lens,
                out / f"lens_{stage}.png",
                "P(refusal tokens), logit lens",
                f"{stage}: refusal by layer",
                log=True,
            ).name
        )
    pooled = result.get("correlation", {}).get("all_checkpoints")
    if pooled:
        p, r = pooled["pearson"], pooled["spearman"]
        subtitle = f"all checkpoints: Pearson {_fmt(p, 2, 'r')}, Spearman {_fmt(r, 2, 'r')}"
        names.append(
            plot_correlation(pooled["points"], out / "correlate.png", "MIR (scene image)", subtitle).name
        )
    return names


def _fmt(est: dict[str, Any] | None, digits: int = 3, key: str = "mean") -> str:
    if not est or est.get(key) is None:
        return "-"
    lo, hi = est["ci"]
    if lo is None:
        return f"{est[key]:.{digits}f}"
    return f"{est[key]:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def markdown(result: dict[str, Any]) -> str:
    """The tables of ``diagnose.json``: aggregates per stage, then per-seed values."""
    seeds = result["seeds"]
    lines = [
        "# Organism diagnostics: modality gap and safety band",
        "",
        f"Seeds {seeds}; {result['settings']['records']} eval requests (half harmful); "
        f"{result['settings']['interval']}.",
        "",
        "## MIR (image tokens vs text tokens after them; text filler: filler tokens vs text after them)",
        "",
    ]
    conditions = result["settings"]["conditions"]
    lines += [
        "| stage | "
        + " | ".join(conditions)
        + " | "
        + " | ".join(f"{c} - filler" for c in conditions if c != "text_filler")
        + " |"
    ]
    lines += ["|---" * (len(conditions) * 2) + "|"]
    for stage in result["stages"]:
        agg = result["aggregate"][stage]
        cells = [_fmt(agg["gap"][c]["mir"]) for c in conditions]
        cells += [
            f"{_fmt(agg['mir_minus_filler'][c])} ({agg['mir_minus_filler'][c]['seeds_positive']}/{len(seeds)} > 0)"
            for c in conditions
            if c != "text_filler"
        ]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    lines += ["", "## Safety band (logit lens, harmful text) and refusal at the output", ""]
    lines += [
        "| stage | band per seed | start | end | P(refusal) last layer: harmful text | harmful + scene image | benign text |",
        "|---|---|---|---|---|---|---|",
    ]
    for stage in result["stages"]:
        agg = result["aggregate"][stage]
        lens = agg["lens"]

        def last(name: str, agg_lens: dict[str, Any] = lens) -> str:
            if name not in agg_lens:
                return "-"
            curve = agg_lens[name]["refusal_prob_mean"]
            return _fmt({"mean": curve["mean"][-1], "ci": curve["ci"][-1]})

        per_seed = ", ".join(
            "-".join(map(str, (b[0], b[-1]))) if b else "none" for b in agg["safety_band"]["per_seed"]
        )
        lines.append(
            f"| {stage} | {per_seed} | {_fmt(agg['safety_band']['start'], 2)} | {_fmt(agg['safety_band']['end'], 2)} | "
            f"{last('harmful_text')} | {last('harmful_text_image')} | {last('benign_text')} |"
        )
    n_layers = len(result["per_seed"][str(seeds[0])][result["stages"][0]]["layers"]["layers"])
    lines += ["", "## Logit lens: P(refusal tokens) at the last prompt position, per layer", ""]
    lines += ["| stage | condition | " + " | ".join(f"layer {k}" for k in range(n_layers)) + " |"]
    lines += ["|---" * (n_layers + 2) + "|"]
    for stage in result["stages"]:
        for name, entry in result["aggregate"][stage]["lens"].items():
            curve = entry["refusal_prob_mean"]
            cells = [_fmt({"mean": m, "ci": c}, 2) for m, c in zip(curve["mean"], curve["ci"], strict=True)]
            lines.append(f"| {stage} | {name} | " + " | ".join(cells) + " |")
    skip_stages = [s for s in result["stages"] if result["aggregate"][s]["layer_skip"]]
    if skip_stages:
        lines += ["", "## Layer skip: first-token refusal probability with one layer skipped", ""]
        header = " | ".join(f"skip {k}" for k in range(n_layers))
        lines += [f"| stage | prompts | none | {header} | largest harmful drop (per seed) |"]
        lines += ["|---" * (n_layers + 4) + "|"]
        for stage in skip_stages:
            skip = result["aggregate"][stage]["layer_skip"]
            for kind in ("harmful", "benign"):
                key = f"{kind}_refusal_prob"
                cells = [_fmt(skip["baseline"][key], 2), *(_fmt(row[key], 2) for row in skip["skipped"])]
                tail = str(skip["largest_drop_layer"]) if kind == "harmful" else ""
                lines.append(f"| {stage} | {kind} text | " + " | ".join(cells) + f" | {tail} |")
    corr = result.get("correlation")
    if corr:
        lines += ["", f"## Correlation: {corr['metric']} vs unsafe proxy ({corr['unsafe']})", ""]
        lines += [
            "| points | n | Pearson r [95% bootstrap] | Spearman rho [95% bootstrap] |",
            "|---|---|---|---|",
        ]
        for name, entry in [*corr["per_stage"].items(), ("all checkpoints", corr["all_checkpoints"])]:
            if entry:
                pearson, spearman = _fmt(entry["pearson"], 2, "r"), _fmt(entry["spearman"], 2, "r")
                lines.append(f"| {name} | {entry['n']} | {pearson} | {spearman} |")
    lines += ["", "## Per seed", ""]
    lines += ["| seed | stage | " + " | ".join(f"MIR {c}" for c in conditions) + " | band | unsafe proxy |"]
    lines += ["|---" * (len(conditions) + 4) + "|"]
    for seed in seeds:
        for stage in result["stages"]:
            run = result["per_seed"][str(seed)][stage]
            band = run["layers"]["safety_band"]
            cells = [f"{run['gap'][c]['mir']:.3f}" for c in conditions]
            unsafe = unsafe_proxy(run)
            cells += [str(band["layers"]) if band else "none", "-" if unsafe is None else f"{unsafe:.2f}"]
            lines.append(f"| {seed} | {stage} | " + " | ".join(cells) + " |")
    lines += ["", f"Per-seed numbers: diagnose.json; figures: {', '.join(result.get('figures', []))}.", ""]
    return "\n".join(lines)
