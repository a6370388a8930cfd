"""``study.md``: the degradation study's tables as markdown (the premises and the worst
over-refusal per defense first, then every regime / variant / defense)."""

from __future__ import annotations

from typing import Any


def _fmt(est: dict[str, Any] | None) -> str:
    if not est or est.get("mean") is None:
        return "-"
    lo, hi = est["ci"]
    return f"{est['mean']:.2f} [{lo:.2f}, {hi:.2f}]"


def _condition_rows(table: dict[str, Any]) -> list[str]:
    lines = ["| condition | harmful refusal | benign refusal | lookalike refusal |", "|---|---|---|---|"]
    for condition, entry in table.items():
        lines.append(
            f"| {condition} | {_fmt(entry.get('harmful_refusal'))} | {_fmt(entry.get('benign_refusal'))} "
            f"| {_fmt(entry.get('lookalike_refusal'))} |"
        )
    return lines


def _gap_rows(gap: dict[str, Any]) -> list[str]:
    """The per-variant measures (:func:`gap_table`) as markdown."""
    some = next(iter(gap.values()))
    layers = some["semantic_shift"]["layers"]
    lines = [
        "## What each variant changes inside the model (mean over seeds, bootstrap 95% CI over seeds)",
        "",
        f"MIR term = Fréchet distance between image tokens and the text after them at decoder layer "
        f"{some['layer']}; caption loss = held-out captioning loss after stage 2; semantic shift = cosine "
        "of mean image-token and caption states (matched / mismatched caption).",
        "",
        "| variant | MIR term, final | MIR term, after stage 2 | caption loss, after stage 2 | "
        + " | ".join(f"semantic shift L{j}" for j in layers)
        + " |",
        "|---|---|---|---|" + "---|" * len(layers),
    ]
    for variant, entry in gap.items():
        staged = entry.get("after_stage2", {})
        shift = entry["semantic_shift"]
        cells = [
            f"{_fmt(m)} / {m2['mean']:.2f}" if m2.get("mean") is not None else _fmt(m)
            for m, m2 in zip(shift["matched"], shift["mismatched"], strict=True)
        ]
        lines.append(
            f"| {variant} | {_fmt(entry['mir_layer'])} | {_fmt(staged.get('mir_layer'))} "
            f"| {_fmt(staged.get('caption_loss'))} | " + " | ".join(cells) + " |"
        )
    versus = {v: e["vs_plain"] for v, e in gap.items() if "vs_plain" in e}
    if versus:
        lines += [
            "",
            "| variant vs plain (per seed) | MIR term ratio, final | MIR term ratio, after stage 2 "
            "| caption loss ratio, after stage 2 | "
            + " | ".join(f"matched cosine gain L{j}" for j in layers)
            + " |",
            "|---|---|---|---|" + "---|" * len(layers),
        ]
        for variant, vs in versus.items():
            gains = " | ".join(_fmt(g) for g in vs["semantic_shift_matched_gain"])
            lines.append(
                f"| {variant} | {_fmt(vs['mir_layer_ratio'])} | {_fmt(vs.get('after_stage2_mir_layer_ratio'))} "
                f"| {_fmt(vs.get('after_stage2_caption_loss_ratio'))} | {gains} |"
            )
    return [*lines, ""]


def _effect_table(
    effects: dict[str, Any], fields: tuple[str, ...], title: str, preface: str | None = None
) -> list[str]:
    """One markdown table of paired effects, ``effects[REGIME][VARIANT][DEFENSE][CONDITION]``."""
    rows = [
        f"| {regime} | {variant} | {defense} | {condition} | "
        + " | ".join(_fmt(e.get(name)) for name in fields)
        + " |"
        for regime, by_variant in effects.items()
        for variant, by_defense in by_variant.items()
        for defense, by_condition in by_defense.items()
        for condition, e in by_condition.items()
    ]
    if not rows:
        return []
    headers = ["regime", "variant", "defense", "condition", *(n.replace("_", " ") for n in fields)]
    return [
        title,
        "",
        *([preface, ""] if preface else []),
        "| " + " | ".join(headers) + " |",
        "|" + "---|" * len(headers),
        *rows,
        "",
    ]


def markdown(study: dict[str, Any]) -> str:
    seeds = ", ".join(str(s) for s in study["seeds"])
    lines = [
        f"# Organism degradation study (seeds {seeds})",
        "",
        "Refusal rates (mean over seeds, 95% CI bootstrapped over seeds and prompts; "
        f"{study['n_prompts']} held-out prompts per set and seed; judge {study['judge']}).",
        "",
    ]
    lines += _premise_rows(study)
    lines += _worst_rows(study)
    lines += _understanding_rows(study)
    for regime, by_variant in study["results"].items():
        for variant, by_defense in by_variant.items():
            for defense, table in by_defense.items():
                lines += [
                    f"## regime `{regime}`, variant `{variant}`, defense `{defense}`",
                    "",
                    *_condition_rows(table),
                    "",
                ]
                diffs = study["differences"].get(regime, {}).get(variant, {}).get(defense, {})
                if diffs:
                    lines += ["| harmful-refusal difference (paired) | mean [95% CI] |", "|---|---|"]
                    lines += [f"| {name} | {_fmt(est)} |" for name, est in diffs.items()]
                    lines.append("")
    lines += _effect_table(
        study.get("defense_effects", {}),
        ("recovery", "harmful_refusal_gain", "benign_refusal_rise"),
        "## What each defense changes (against the same variant without it; paired per prompt)",
        "Recovery = the fraction of the text-minus-image drop in harmful refusal won back.",
    )
    lines += _effect_table(
        study.get("variant_effects", {}),
        ("harmful_refusal_gain", "benign_refusal_rise"),
        "## What each training variant changes (against the plain organism with the same defense; paired)",
    )
    if study.get("gap"):
        lines += _gap_rows(study["gap"])
    if study.get("stages"):
        lines += ["## Harmful refusal by training stage (plain, no defense)", ""]
        conditions = study["conditions"]
        lines += ["| stage | " + " | ".join(conditions) + " |", "|---|" + "---|" * len(conditions)]
        for stage, entry in study["stages"].items():
            cells = [_fmt(entry["conditions"][c].get("harmful_refusal")) for c in conditions]
            lines.append(f"| {stage} | " + " | ".join(cells) + " |")
        lines += ["", "| stage | benign refusal, max over conditions |", "|---|---|"]
        for stage, entry in study["stages"].items():
            worst = max(
                (entry["conditions"][c].get("benign_refusal", {}).get("mean") or 0.0) for c in conditions
            )
            lines.append(f"| {stage} | {worst:.2f} |")
        lines.append("")
    if study.get("real_prompts"):
        lines += [
            "## Real benchmark prompts (outside the organism's world; not gated)",
            "",
            "| set | harmful? | text refusal | blank-image refusal |",
            "|---|---|---|---|",
        ]
        for name, entry in study["real_prompts"].items():
            harmful = next(iter(entry.values()))["harmful"]
            lines.append(
                f"| {name} | {'yes' if harmful else 'no'} | {_fmt(entry.get('text', {}).get('refusal'))} "
                f"| {_fmt(entry.get('blank_image', {}).get('refusal'))} |"
            )
        lines.append("")
    b = study["build_seconds"]
    lines.append(f"Build seconds: mean {b['mean']}, max {b['max']} ({b['built_now']} built in this run).")
    return "\n".join(lines) + "\n"


def _premise_rows(study: dict[str, Any]) -> list[str]:
    premises = study.get("premises") or {}
    if not premises:
        return []
    lines = [
        "## Premises of the organism (plain, no defense)",
        "",
        "| regime | premise | rule | value | met |",
        "|---|---|---|---|---|",
    ]
    for regime, checks in premises.items():
        for name, check in checks.items():
            met = {True: "yes", False: "**no**", None: "not measured"}[check["met"]]
            lines.append(
                f"| {regime} | {name} | {check.get('rule', '')} | {_value(check['value'])} | {met} |"
            )
    return [*lines, ""]


def _value(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {_value(v)}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:.2f}"
    return "-" if value is None else str(value)


def _worst_rows(study: dict[str, Any]) -> list[str]:
    """Worst benign refusal over *all* conditions, per regime, variant and defense."""
    worst = study.get("worst_over_refusal") or {}
    rows = [
        f"| {regime} | {variant} | {defense} | {_fmt(w)} | {w.get('condition') or '-'} |"
        for regime, by_variant in worst.items()
        for variant, by_defense in by_variant.items()
        for defense, w in by_defense.items()
    ]
    if not rows:
        return []
    return [
        "## Worst over-refusal (benign refusal, worst condition)",
        "",
        "| regime | variant | defense | worst benign refusal | condition |",
        "|---|---|---|---|---|",
        *rows,
        "",
    ]


def _understanding_rows(study: dict[str, Any]) -> list[str]:
    iu = study.get("image_understanding") or {}
    rows = []
    for regime, by_variant in iu.items():
        for variant, est in by_variant.items():
            kinds = est.get("by_kind", {})
            rows.append(
                f"| {regime} | {variant} | {_fmt(est)} | "
                + " | ".join(_fmt(kinds.get(k)) for k in ("harmful_object", "benign_object", "scene"))
                + " |"
            )
    if not rows:
        return []
    return [
        "## Image understanding (held-out exact naming accuracy)",
        "",
        "| regime | variant | all | harmful objects | benign objects | scenes |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
    ]
