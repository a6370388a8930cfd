"""The degradation study: build the organism per seed, measure refusals under every condition,
aggregate over seeds with clustered bootstrap intervals, and write ``study.json`` / ``study.md``.

Variants (how the organism is trained) and defenses (how it generates) plug in through the
registries of :mod:`safegap.organism.study_plan` (``VARIANTS``, ``ORGANISM_DEFENSES``). Every
refusal figure comes from eval's runner on the organism benchmark with the refusal judge
(:mod:`safegap.organism.study_eval`: one ``safegap eval`` run directory per cell under ``runs/``).

Output contract (``study.json``)::

    {"seeds": [...], "regimes": ["projector", "full"],
     "results": {REGIME: {VARIANT: {DEFENSE: {CONDITION: {"harmful_refusal": {"mean", "ci"},
                                                          "benign_refusal": {"mean", "ci"},
                                                          "lookalike_refusal": {"mean", "ci"}}}}}},
     "differences": {REGIME: {VARIANT: {DEFENSE: {"text_minus_benign_image": {"mean", "ci"}, ...}}}},
     "worst_over_refusal": {REGIME: {VARIANT: {DEFENSE: {"condition", "mean", "ci"}}}},
     "per_seed_degradation": {REGIME: {VARIANT: {DEFENSE: {SEED: {"mean", "ci"}}}}},
     "image_understanding": {REGIME: {VARIANT: {"mean", "ci", "by_kind": {KIND: {"mean", "ci"}}}}},
     "premises": {REGIME: {PREMISE: {"met", "value", "rule"}}},
     "stages": {"after_stage1": {CONDITION: ...}, "after_stage2": ..., "final": ...},
     "real_prompts": {SET: {CONDITION: {"refusal": {"mean", "ci"}, "harmful": bool}}},
     "build_seconds": {"mean", "max"}, "builds": [...], ...}

Regimes (:mod:`safegap.organism.regimes`): ``full`` is stages 0-3, ``projector`` the same build's
after-stage-2 checkpoint (the LLM never tuned with images). Aggregation lives in
:mod:`safegap.organism.study_aggregate`, the markdown in :mod:`safegap.organism.study_report`.

Per-prompt outcomes go to ``per_seed/{regime}__{variant}__{defense}__seed{N}.jsonl`` (one row per prompt),
so any paired difference can be recomputed; the eval run behind each is ``runs/{same name}/``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safegap.eval.defenses import NoDefense
from safegap.eval.records import write_atomic
from safegap.models.loading import VLM, load_vlm
from safegap.organism import real_prompts
from safegap.organism.build import STAGE_NAMES, make_world
from safegap.organism.evaluate import Outcome
from safegap.organism.measures import variant_measures
from safegap.organism.names import parse_names, parse_seeds
from safegap.organism.regimes import regime_checkpoint
from safegap.organism.study_aggregate import (
    DIFFERENCES,
    EFFECT_CONDITIONS,
    VARIANT_EFFECT_CONDITIONS,
    aggregate,
    condition_table,
    difference_table,
    effect_table,
    gap_table,
)
from safegap.organism.study_eval import evaluate_organism, judge_id, real_refusals, write_outcomes
from safegap.organism.study_plan import (
    ORGANISM_DEFENSES,
    REGAP_LAYERS,
    REGAP_WEIGHT,
    TGA_LAYERS,
    TGA_NEGATIVES,
    TGA_WEIGHT,
    VARIANTS,
    CalibrationData,
    StudyOptions,
    StudyProgress,
    Variant,
    calibration_data,
    check_options,
    ensure_organism,
    organism_dir,
    regap_variant,
)
from safegap.organism.study_report import markdown
from safegap.organism.understanding import understanding_outcomes
from safegap.organism.world import World


@dataclass
class _Collected:
    """Everything one study gathers before aggregation."""

    outcomes: dict[tuple[str, str, str, int], list[Outcome]] = field(default_factory=dict)
    stages: dict[tuple[str, int], list[Outcome]] = field(default_factory=dict)
    understanding: dict[tuple[str, str, int], list[dict[str, Any]]] = field(default_factory=dict)
    real: dict[tuple[str, str, int], list[bool]] = field(default_factory=dict)
    builds: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    gaps: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    skipped_real: dict[str, str] = field(default_factory=dict)


def run_study(
    options: StudyOptions, out_dir: str | Path, progress: StudyProgress | None = None
) -> dict[str, Any]:
    """Build, evaluate, aggregate; writes ``study.json``, ``study.md``, ``per_seed/*.jsonl`` and
    one eval run directory per evaluation under ``runs/``."""
    out = Path(out_dir)
    (out / "per_seed").mkdir(parents=True, exist_ok=True)
    check_options(options)
    base_world = make_world(options.config)
    got = _Collected()
    total = len(options.seeds) * len(options.variants)
    done = [0.0]

    def note(message: str) -> None:
        if progress is not None:
            progress(message, round(done[0], 2), total)

    for seed in options.seeds:
        for variant_name in options.variants:
            variant = VARIANTS[variant_name](options.config, base_world)
            config = variant.config or options.config
            world = make_world(config)
            build_snapshots = options.stage_snapshots or options.variant_gap or "projector" in options.regimes
            unit = done[0]

            def build_progress(
                stage: str, i: int, n: int, _s: int = seed, _v: str = variant_name, _u: float = unit
            ) -> None:
                # building is most of the work: stage k of 4 maps to [k/5, (k+1)/5) of the unit
                k = STAGE_NAMES.index(stage) if stage in STAGE_NAMES else 0
                done[0] = _u + (k + i / max(n, 1)) / 5
                note(f"seed {_s} {_v}: {stage} {i}/{n}")

            note(f"seed {seed} {variant_name}: building")
            path, build = ensure_organism(
                out, variant, seed, config, options.cache_dir, build_snapshots, build_progress
            )
            got.builds.append({"variant": variant_name, **build})
            if options.variant_gap:
                note(f"seed {seed} {variant_name}: gap, semantic shift, caption loss")
                got.gaps[(variant_name, seed)] = variant_measures(path, world)
            for regime in options.regimes:
                _evaluate_regime(options, out, got, path, world, regime, variant_name, seed, note)
            if options.stage_snapshots and variant_name == "plain":
                note(f"seed {seed}: evaluating stage snapshots")
                _stage_snapshots(options, out, got, path, seed)
            done[0] = unit + 1
    note("aggregating")
    study = aggregate(options, got.outcomes, got.stages, got.real, got.builds, got.understanding)
    study["judge"] = judge_id()
    study["defense_settings"] = got.settings
    if got.gaps:
        study["gap"] = gap_table(options.variants, options.seeds, got.gaps)
    study["real_prompts_skipped"] = got.skipped_real
    _write_study(out, study, got.understanding)
    note("done")
    return study


def _evaluate_regime(
    options: StudyOptions,
    out: Path,
    got: _Collected,
    path: Path,
    world: World,
    regime: str,
    variant_name: str,
    seed: int,
    note: Any,
) -> None:
    """Image understanding, every defense through eval's runner, and (plain, full) real prompts."""
    checkpoint = regime_checkpoint(path, regime)
    vlm = load_vlm(checkpoint)
    calibration = calibration_data(world)
    if options.understanding:
        note(f"seed {seed} {regime}/{variant_name}: image understanding")
        got.understanding[(regime, variant_name, seed)] = understanding_outcomes(vlm, world)
    for defense_name in options.defenses:
        note(f"seed {seed} {regime}/{variant_name}/{defense_name}: evaluating")
        defense = ORGANISM_DEFENSES[defense_name](vlm, calibration)
        by_seed = got.settings.setdefault(regime, {}).setdefault(variant_name, {})
        by_seed.setdefault(defense_name, {})[str(seed)] = {
            "id": defense.id,
            **({"tuning": t} if (t := getattr(defense, "tuning", None)) else {}),
        }
        name = f"{regime}__{variant_name}__{defense_name}__seed{seed}"
        rows = evaluate_organism(
            vlm,
            checkpoint,
            path,
            defense_name,
            defense,
            options.conditions,
            options.n_prompts,
            options.max_new_tokens,
            out / "runs" / name,
        )
        got.outcomes[(regime, variant_name, defense_name, seed)] = rows
        write_outcomes(out / "per_seed" / f"{name}.jsonl", rows, seed)
    if options.n_real > 0 and variant_name == "plain" and regime == "full":
        note(f"seed {seed}: real benchmark prompts")
        _real_prompts(vlm, checkpoint, seed, options, out, got)


def _stage_snapshots(options: StudyOptions, out: Path, got: _Collected, path: Path, seed: int) -> None:
    """The plain organism after stages 1 and 2 (after stage 2 is the projector regime's run when
    the study has one) and the final one, undefended."""
    got.stages[("after_stage2", seed)] = got.outcomes.get(("projector", "plain", "none", seed), [])
    got.stages[("final", seed)] = got.outcomes.get(("full", "plain", "none", seed), [])
    stages = ("after_stage1",) + (() if got.stages[("after_stage2", seed)] else ("after_stage2",))
    for stage in stages:
        checkpoint = path / "stages" / stage
        rows = evaluate_organism(
            load_vlm(checkpoint),
            checkpoint,
            path,
            "none",
            NoDefense(),
            options.conditions,
            options.n_prompts,
            options.max_new_tokens,
            out / "runs" / f"{stage}__seed{seed}",
        )
        got.stages[(stage, seed)] = rows
        write_outcomes(out / "per_seed" / f"{stage}__seed{seed}.jsonl", rows, seed)


def _real_prompts(
    vlm: VLM, checkpoint: Path, seed: int, options: StudyOptions, out: Path, got: _Collected
) -> None:
    """Refusals on real benchmark prompts (``organism_real``); a set that cannot be read goes to
    ``real_prompts_skipped`` with why."""
    from safegap.data.benchmarks import BenchmarkError

    root = real_prompts.data_dir(options.data_dir)
    for name in real_prompts.REAL_SETS:
        run_dir = out / "runs" / f"real__{name}__seed{seed}"
        try:
            refused = real_refusals(
                vlm, checkpoint, name, options.n_real, root, options.max_new_tokens, run_dir
            )
        except BenchmarkError as exc:
            got.skipped_real[name] = str(exc).splitlines()[0]
            continue
        for condition, rows in refused.items():
            got.real[(name, condition, seed)] = rows


def _write_study(
    out: Path, study: dict[str, Any], understanding: dict[tuple[str, str, int], list[dict[str, Any]]]
) -> None:
    write_atomic(out / "study.json", json.dumps(study, indent=1).encode())
    write_atomic(out / "study.md", markdown(study).encode())
    if understanding:
        lines = [
            json.dumps({"regime": r, "variant": v, "seed": s, **row})
            for (r, v, s), rows in understanding.items()
            for row in rows
        ]
        write_atomic(out / "per_seed" / "image_understanding.jsonl", ("\n".join(lines) + "\n").encode())


__all__ = [
    "DIFFERENCES",
    "EFFECT_CONDITIONS",
    "ORGANISM_DEFENSES",
    "REGAP_LAYERS",
    "REGAP_WEIGHT",
    "TGA_LAYERS",
    "TGA_NEGATIVES",
    "TGA_WEIGHT",
    "VARIANTS",
    "VARIANT_EFFECT_CONDITIONS",
    "CalibrationData",
    "StudyOptions",
    "Variant",
    "aggregate",
    "calibration_data",
    "condition_table",
    "difference_table",
    "effect_table",
    "ensure_organism",
    "gap_table",
    "markdown",
    "organism_dir",
    "parse_names",
    "parse_seeds",
    "regap_variant",
    "run_study",
]
