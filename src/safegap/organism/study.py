"""The degradation study: build the organism per seed, measure refusals under every condition,
aggregate over seeds with clustered bootstrap intervals, and write ``study.json`` / ``study.md``.

Variants (how the organism is trained) and defenses (how it generates) plug in through two
registries, so the training and CMRM work add rows without touching this module:

* ``VARIANTS[name](config, world) -> Variant``: extra loss terms for stages 2/3 and/or a changed
  config (``plain`` is the recipe as is).
* ``ORGANISM_DEFENSES[name](vlm, calibration) -> Defense`` (``none`` is plain generation).

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
so any paired difference can be recomputed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from safegap.eval.defenses import Defense, NoDefense
from safegap.eval.records import write_atomic
from safegap.models.loading import VLM, load_vlm
from safegap.organism import real_prompts, scenes
from safegap.organism.build import STAGE_NAMES, BuildReport, build_organism, default_cache_dir, make_world
from safegap.organism.config import OrganismConfig
from safegap.organism.evaluate import CONDITIONS, Outcome, Prompt, evaluate_conditions, run_prompts
from safegap.organism.measures import variant_measures
from safegap.organism.names import parse_names, parse_seeds
from safegap.organism.regimes import REGIMES, parse_regimes, regime_checkpoint
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
from safegap.organism.study_report import markdown
from safegap.organism.understanding import understanding_outcomes
from safegap.organism.world import World
from safegap.train.hooks import ExtraLoss

# -- plug-in registries --------------------------------------------------------------------------


@dataclass
class Variant:
    """How one variant changes the build: loss terms per stage (2, 3) and/or a new config.

    ``key`` names what makes it differ (it goes into the cache key of the finished organism);
    a variant whose losses depend on settings should put them in ``key``.
    """

    key: str
    extra_losses: dict[int, list[ExtraLoss]] = field(default_factory=dict)
    config: OrganismConfig | None = None


VariantFactory = Callable[[OrganismConfig, World], Variant]

#: ReGap on the organism: lambda and layer of the term added to stage 2 (projector pretraining,
#: where the paper applies it; ``research/regap.md`` 4.2 candidate A, ``docs/training.md``).
REGAP_WEIGHT = 1.0
REGAP_LAYERS: tuple[int, ...] = (0,)
#: TGA on the organism: the guided decoder layers (its safety band, ``safegap organism diagnose``)
#: and the weight of the term. It is added to stage 2 (projector pretraining: the projector
#: regime's only image training, as the released code also guides pretraining rows) and to stage
#: 3 (visual instruction tuning), with the in-batch caption ranking on ("as published": the
#: captions of the batch's other images are the retrieved negatives, ``docs/training.md``).
TGA_LAYERS: tuple[int, ...] = (1, 2, 3)
TGA_WEIGHT = 1.0
TGA_NEGATIVES: Literal["none", "batch"] = "batch"


def regap_variant(config: OrganismConfig, weight: float = REGAP_WEIGHT) -> Variant:
    """ReGap at ``weight`` in stage 2 (the study's ``regap`` and every point of the sweep)."""
    from safegap.train.regap import ReGapLoss

    warmup = max(1, config.projector.steps // 10)
    loss = ReGapLoss(weight=weight, layers=REGAP_LAYERS, warmup_steps=warmup)
    layers = "-".join(str(x) for x in REGAP_LAYERS)
    return Variant(f"regap-w{weight:g}-l{layers}-warm{warmup}", {2: [loss]})


def _regap(config: OrganismConfig, world: World) -> Variant:
    return regap_variant(config)


def _tga(config: OrganismConfig, world: World) -> Variant:
    from safegap.train.tga import TGALoss

    layers = "-".join(str(x) for x in TGA_LAYERS)

    def loss() -> TGALoss:
        return TGALoss(layers=TGA_LAYERS, weight=TGA_WEIGHT, negatives=TGA_NEGATIVES)

    return Variant(f"tga-w{TGA_WEIGHT:g}-l{layers}-s23-neg{TGA_NEGATIVES}", {2: [loss()], 3: [loss()]})


VARIANTS: dict[str, VariantFactory] = {
    "plain": lambda config, world: Variant("plain"),
    "regap": _regap,
    "tga": _tga,
}


@dataclass(frozen=True)
class CalibrationData:
    """The calibration split (topics and phrasings disjoint from training and from eval), as
    CMRM-style anchors: requests as text, the same requests with an image, and images."""

    world: World
    harmful: list[str]
    benign: list[str]
    images: list[Any]
    blank: Any

    def labelled(self) -> tuple[list[tuple[str, Any]], list[tuple[str, Any]]]:
        """``(harmful, benign)`` anchors: each request with its benign scene image."""
        return list(zip(self.harmful, self.images, strict=False)), list(
            zip(self.benign, self.images, strict=False)
        )


def calibration_data(world: World, n: int = 48) -> CalibrationData:
    import random

    rng = random.Random(f"calibration-{world.seed}")
    harmful = [r.text for r in world.requests("calibration", True, limit=n)]
    benign = [r.text for r in world.requests("calibration", False, limit=n)]
    images = [scenes.scene(rng).image for _ in range(n)]
    return CalibrationData(world, harmful, benign, images, scenes.blank())


def _cmrm(vlm: VLM, calibration: CalibrationData) -> Defense:
    """Dataset-level CMRM as a user would run it: the shift calibrated on the calibration split
    (its requests with benign scenes, blank-image corruption), then alpha and the vector's form
    chosen on the same split (:func:`safegap.steer.sweep.tune`); nothing is fitted on the
    evaluation prompts."""
    from safegap.eval.cmrm import tuned_cmrm_defense

    harmful, benign = calibration.labelled()
    return tuned_cmrm_defense(vlm, harmful + benign, harmful, benign, batch_size=64)


def _cmrm_sample(vlm: VLM, calibration: CalibrationData) -> Defense:
    """Sample-level CMRM, alpha chosen on the calibration split like :func:`_cmrm`."""
    from safegap.eval.cmrm import tuned_sample_defense

    harmful, benign = calibration.labelled()
    return tuned_sample_defense(vlm, harmful, benign, batch_size=64)


DefenseFactory = Callable[[VLM, CalibrationData], Defense]
ORGANISM_DEFENSES: dict[str, DefenseFactory] = {
    "none": lambda vlm, calibration: NoDefense(batch_size=64),
    "cmrm": _cmrm,
    "cmrm_sample": _cmrm_sample,
}


# -- running -------------------------------------------------------------------------------------

#: progress(message, done, total)
StudyProgress = Callable[[str, float, int], None]


@dataclass
class StudyOptions:
    seeds: list[int]
    #: ``full`` (stages 0-3) and/or ``projector`` (the after-stage-2 checkpoint of the same build).
    regimes: list[str] = field(default_factory=lambda: list(REGIMES))
    variants: list[str] = field(default_factory=lambda: ["plain"])
    defenses: list[str] = field(default_factory=lambda: ["none"])
    conditions: list[str] = field(default_factory=lambda: list(CONDITIONS))
    n_prompts: int = 64
    max_new_tokens: int = 16
    config: OrganismConfig = field(default_factory=OrganismConfig)
    #: Where to reuse text-aligned bases and finished organisms (None: build everything).
    cache_dir: Path | None = field(default_factory=default_cache_dir)
    #: Also measure the plain organism after stages 1 and 2.
    stage_snapshots: bool = True
    #: Real benchmark prompts per set (0: skip).
    n_real: int = 50
    #: Per variant: MIR's term at ReGap's layer, the semantic shift and the caption loss
    #: (:mod:`safegap.organism.measures`); needs the after-stage-2 snapshot of every variant.
    variant_gap: bool = True
    #: Held-out captioning accuracy per regime and variant (``image_understanding``).
    understanding: bool = True
    data_dir: Path | None = None


def organism_dir(cache_dir: Path | None, out_dir: Path, key: str, seed: int, config: OrganismConfig) -> Path:
    """Where the finished organism of variant ``key`` lives (cache, else under the output)."""
    root = cache_dir if cache_dir is not None else out_dir / "organisms"
    return root / f"{key}-seed{seed}-{config.digest()}"


def ensure_organism(
    out_dir: Path,
    variant: Variant,
    seed: int,
    config: OrganismConfig,
    cache_dir: Path | None,
    snapshots: bool,
    progress: Callable[[str, int, int], None] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """The organism's checkpoint dir, built unless a finished one is cached; and its build facts."""
    path = organism_dir(cache_dir, out_dir, variant.key, seed, config)
    marker = path / "organism.json"
    if marker.exists() and (not snapshots or (path / "stages" / "after_stage2" / "config.json").exists()):
        build = json.loads(marker.read_text())["build"]
        return path, {**build, "reused": True}
    report: BuildReport = build_organism(
        path,
        seed,
        config,
        cache_dir=cache_dir,
        extra_losses=dict(variant.extra_losses),
        snapshot_stages=snapshots,
        progress=progress,
    )
    return path, {**report.as_dict(), "reused": False}


def run_study(
    options: StudyOptions, out_dir: str | Path, progress: StudyProgress | None = None
) -> dict[str, Any]:
    """Build, evaluate, aggregate; writes ``study.json``, ``study.md`` and ``per_seed/*.jsonl``."""
    out = Path(out_dir)
    (out / "per_seed").mkdir(parents=True, exist_ok=True)
    parse_names(options.variants, VARIANTS, "variant")
    parse_names(options.defenses, ORGANISM_DEFENSES, "defense")
    parse_regimes(options.regimes)
    for condition in options.conditions:
        if condition not in CONDITIONS:
            raise ValueError(f"unknown condition {condition!r}; known: {', '.join(CONDITIONS)}")
    base_world = make_world(options.config)
    outcomes: dict[tuple[str, str, str, int], list[Outcome]] = {}
    stage_outcomes: dict[tuple[str, int], list[Outcome]] = {}
    understanding: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    real: dict[tuple[str, str, int], list[bool]] = {}
    builds: list[dict[str, Any]] = []
    settings: dict[str, Any] = {}
    gaps: dict[tuple[str, int], dict[str, Any]] = {}
    skipped_real: dict[str, str] = {}
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
            snapshots = options.stage_snapshots and variant_name == "plain"
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
            builds.append({"variant": variant_name, **build})
            if options.variant_gap:
                note(f"seed {seed} {variant_name}: gap, semantic shift, caption loss")
                gaps[(variant_name, seed)] = variant_measures(path, world)
            calibration = calibration_data(world)
            for regime in options.regimes:
                vlm = load_vlm(regime_checkpoint(path, regime))
                if options.understanding:
                    note(f"seed {seed} {regime}/{variant_name}: image understanding")
                    understanding[(regime, variant_name, seed)] = understanding_outcomes(vlm, world)
                for defense_name in options.defenses:
                    note(f"seed {seed} {regime}/{variant_name}/{defense_name}: evaluating")
                    defense = ORGANISM_DEFENSES[defense_name](vlm, calibration)
                    by_seed = settings.setdefault(regime, {}).setdefault(variant_name, {})
                    by_seed.setdefault(defense_name, {})[str(seed)] = {
                        "id": defense.id,
                        **({"tuning": t} if (t := getattr(defense, "tuning", None)) else {}),
                    }
                    rows = evaluate_conditions(
                        vlm, world, defense, options.conditions, options.n_prompts, options.max_new_tokens
                    )
                    outcomes[(regime, variant_name, defense_name, seed)] = rows
                    name = f"{regime}__{variant_name}__{defense_name}__seed{seed}.jsonl"
                    _write_jsonl(out / "per_seed" / name, rows, seed)
                if options.n_real > 0 and variant_name == "plain" and regime == "full":
                    note(f"seed {seed}: real benchmark prompts")
                    real.update(_real_prompts(vlm, seed, options, skipped_real))
            if snapshots:
                note(f"seed {seed}: evaluating stage snapshots")
                stage_outcomes[("after_stage2", seed)] = outcomes.get(
                    ("projector", "plain", "none", seed), []
                )
                stage_outcomes[("final", seed)] = outcomes.get(("full", "plain", "none", seed), [])
                stages = ("after_stage1",) + (
                    () if stage_outcomes[("after_stage2", seed)] else ("after_stage2",)
                )
                for stage in stages:
                    snap = load_vlm(path / "stages" / stage)
                    rows = evaluate_conditions(
                        snap,
                        world,
                        NoDefense(batch_size=64),
                        options.conditions,
                        options.n_prompts,
                        options.max_new_tokens,
                    )
                    stage_outcomes[(stage, seed)] = rows
                    _write_jsonl(out / "per_seed" / f"{stage}__seed{seed}.jsonl", rows, seed)
            done[0] = unit + 1
    note("aggregating")
    study = aggregate(options, outcomes, stage_outcomes, real, builds, understanding)
    study["defense_settings"] = settings
    if gaps:
        study["gap"] = gap_table(options.variants, options.seeds, gaps)
    study["real_prompts_skipped"] = skipped_real
    write_atomic(out / "study.json", json.dumps(study, indent=1).encode())
    write_atomic(out / "study.md", markdown(study).encode())
    if understanding:
        lines = [
            json.dumps({"regime": r, "variant": v, "seed": s, **row})
            for (r, v, s), rows in understanding.items()
            for row in rows
        ]
        write_atomic(out / "per_seed" / "image_understanding.jsonl", ("\n".join(lines) + "\n").encode())
    note("done")
    return study


def _real_prompts(
    vlm: VLM, seed: int, options: StudyOptions, skipped: dict[str, str]
) -> dict[tuple[str, str, int], list[bool]]:
    """Refusals on real benchmark prompts; sets that cannot be read go to ``skipped`` with why."""
    out: dict[tuple[str, str, int], list[bool]] = {}
    defense = NoDefense(batch_size=32)
    for name, (loader, harmful) in real_prompts.REAL_SETS.items():
        try:
            texts = real_prompts.spread(loader(options.data_dir), options.n_real)
        except (FileNotFoundError, ValueError) as exc:
            skipped[name] = str(exc).splitlines()[0]
            continue
        for condition, image in (("text", None), ("blank_image", scenes.blank())):
            prompts = [
                Prompt(f"{name}{k}", condition, "harmful" if harmful else "benign", t, image, name)
                for k, t in enumerate(texts)
            ]
            out[(name, condition, seed)] = [
                o.refused for o in run_prompts(vlm, defense, prompts, options.max_new_tokens)
            ]
    return out


# -- aggregation ---------------------------------------------------------------------------------


# -- output --------------------------------------------------------------------------------------
def _write_jsonl(path: Path, rows: Sequence[Outcome], seed: int) -> None:
    lines = [json.dumps({"seed": seed, **o.as_row()}) for o in rows]
    write_atomic(path, ("\n".join(lines) + "\n").encode())


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    return fn(), time.perf_counter() - start


__all__ = [
    "DIFFERENCES",
    "EFFECT_CONDITIONS",
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
    "regap_variant",
    "markdown",
    "parse_names",
    "parse_seeds",
    "run_study",
]
