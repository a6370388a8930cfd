"""The degradation study: build the organism per seed, measure refusals under every condition,
aggregate over seeds with clustered bootstrap intervals, and write ``study.json`` / ``study.md``.

Variants (how the organism is trained) and defenses (how it generates) plug in through two
registries, so the training and CMRM work add rows without touching this module:

* ``VARIANTS[name](config, world) -> Variant``: extra loss terms for stages 2/3 and/or a changed
  config (``plain`` is the recipe as is).
* ``ORGANISM_DEFENSES[name](vlm, calibration) -> Defense`` (``none`` is plain generation).

Output contract (``study.json``)::

    {"seeds": [...],
     "results": {VARIANT: {DEFENSE: {CONDITION: {"harmful_refusal": {"mean", "ci"},
                                                  "benign_refusal": {"mean", "ci"},
                                                  "lookalike_refusal": {"mean", "ci"}}}}},
     "differences": {VARIANT: {DEFENSE: {"text_minus_benign_image": {"mean", "ci"}, ...}}},
     "stages": {"after_stage1": {CONDITION: ...}, "after_stage2": ..., "final": ...},
     "real_prompts": {SET: {CONDITION: {"refusal": {"mean", "ci"}, "harmful": bool}}},
     "build_seconds": {"mean", "max"}, "builds": [...], ...}

Per-prompt outcomes go to ``per_seed/{variant}__{defense}__seed{N}.jsonl`` (one row per prompt),
so any paired difference can be recomputed.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from safegap.eval.bootstrap import (
    bootstrap_clustered,
    bootstrap_mean,
    bootstrap_paired_difference,
    bootstrap_ratio,
)
from safegap.eval.defenses import Defense, NoDefense
from safegap.models.loading import VLM, load_vlm
from safegap.organism import real_prompts, scenes
from safegap.organism.build import STAGE_NAMES, BuildReport, build_organism, default_cache_dir, make_world
from safegap.organism.config import OrganismConfig
from safegap.organism.evaluate import CONDITIONS, KINDS, Outcome, Prompt, evaluate_conditions, run_prompts
from safegap.organism.measures import variant_measures
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
#: and the weight of the term added to stage 3 (visual instruction tuning, where TGA trains).
TGA_LAYERS: tuple[int, ...] = (1, 2, 3)
TGA_WEIGHT = 1.0


def _regap(config: OrganismConfig, world: World) -> Variant:
    from safegap.train.regap import ReGapLoss

    warmup = max(1, config.projector.steps // 10)
    loss = ReGapLoss(weight=REGAP_WEIGHT, layers=REGAP_LAYERS, warmup_steps=warmup)
    layers = "-".join(str(x) for x in REGAP_LAYERS)
    return Variant(f"regap-w{REGAP_WEIGHT:g}-l{layers}-warm{warmup}", {2: [loss]})


def _tga(config: OrganismConfig, world: World) -> Variant:
    from safegap.train.tga import TGALoss

    loss = TGALoss(layers=TGA_LAYERS, weight=TGA_WEIGHT)
    layers = "-".join(str(x) for x in TGA_LAYERS)
    return Variant(f"tga-w{TGA_WEIGHT:g}-l{layers}", {3: [loss]})


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
    chosen on the same split (:func:`safegap.steer.defenses.tune_cmrm`); nothing is fitted on the
    evaluation prompts."""
    from safegap.steer.defenses import tuned_cmrm_defense

    harmful, benign = calibration.labelled()
    return tuned_cmrm_defense(vlm, harmful + benign, harmful, benign, batch_size=64)


def _cmrm_sample(vlm: VLM, calibration: CalibrationData) -> Defense:
    """Sample-level CMRM, alpha chosen on the calibration split like :func:`_cmrm`."""
    from safegap.steer.defenses import tuned_sample_defense

    harmful, benign = calibration.labelled()
    return tuned_sample_defense(vlm, harmful, benign, batch_size=64)


DefenseFactory = Callable[[VLM, CalibrationData], Defense]
ORGANISM_DEFENSES: dict[str, DefenseFactory] = {
    "none": lambda vlm, calibration: NoDefense(batch_size=64),
    "cmrm": _cmrm,
    "cmrm_sample": _cmrm_sample,
}


def parse_names(spec: str | Sequence[str], registry: dict[str, Any], what: str) -> list[str]:
    """``"a,b"`` -> ["a", "b"], each checked against ``registry`` (clear error on unknown)."""
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    names = [n for n in names if n]
    if not names:
        raise ValueError(f"no {what} given")
    for name in names:
        if name not in registry:
            raise ValueError(f"unknown {what} {name!r}; known: {', '.join(sorted(registry))}")
    return names


def parse_seeds(spec: str) -> list[int]:
    """``"0,1,2"`` or ``"0-4"``."""
    seeds: list[int] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        try:
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                seeds.extend(range(lo, hi + 1))
            else:
                seeds.append(int(part))
        except ValueError as exc:
            raise ValueError(f"seeds: {part!r} is not an integer or a range like 0-4") from exc
    if not seeds:
        raise ValueError("no seeds given")
    return seeds


# -- running -------------------------------------------------------------------------------------

#: progress(message, done, total)
StudyProgress = Callable[[str, float, int], None]


@dataclass
class StudyOptions:
    seeds: list[int]
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
    for condition in options.conditions:
        if condition not in CONDITIONS:
            raise ValueError(f"unknown condition {condition!r}; known: {', '.join(CONDITIONS)}")
    base_world = make_world(options.config)
    outcomes: dict[tuple[str, str, int], list[Outcome]] = {}
    stage_outcomes: dict[tuple[str, int], list[Outcome]] = {}
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
            build_snapshots = options.stage_snapshots or options.variant_gap
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
            vlm = load_vlm(path)
            calibration = calibration_data(world)
            for defense_name in options.defenses:
                note(f"seed {seed} {variant_name}/{defense_name}: evaluating")
                defense = ORGANISM_DEFENSES[defense_name](vlm, calibration)
                settings.setdefault(variant_name, {}).setdefault(defense_name, {})[str(seed)] = {
                    "id": defense.id,
                    **({"tuning": t} if (t := getattr(defense, "tuning", None)) else {}),
                }
                rows = evaluate_conditions(
                    vlm, world, defense, options.conditions, options.n_prompts, options.max_new_tokens
                )
                outcomes[(variant_name, defense_name, seed)] = rows
                _write_jsonl(
                    out / "per_seed" / f"{variant_name}__{defense_name}__seed{seed}.jsonl", rows, seed
                )
            if snapshots:
                note(f"seed {seed}: evaluating stage snapshots")
                for stage in ("after_stage1", "after_stage2"):
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
                stage_outcomes[("final", seed)] = outcomes.get(("plain", "none", seed), [])
            if options.n_real > 0 and variant_name == "plain":
                note(f"seed {seed}: real benchmark prompts")
                real.update(_real_prompts(vlm, seed, options, skipped_real))
            done[0] = unit + 1
    note("aggregating")
    study = aggregate(options, outcomes, stage_outcomes, real, builds)
    study["defense_settings"] = settings
    if gaps:
        study["gap"] = gap_table(options, gaps)
    study["real_prompts_skipped"] = skipped_real
    _write_atomic(out / "study.json", json.dumps(study, indent=1))
    _write_atomic(out / "study.md", markdown(study))
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
def _by_prompt(rows: Sequence[Outcome], condition: str, kind: str) -> dict[str, float]:
    return {
        o.prompt.id: float(o.refused)
        for o in rows
        if o.prompt.condition == condition and o.prompt.kind == kind
    }


def _estimate(groups: list[list[float]]) -> dict[str, Any]:
    groups = [g for g in groups if g]
    if not groups:
        return {"mean": None, "ci": [None, None]}
    est = bootstrap_clustered(groups).as_dict()
    return _rounded(est)


def _rounded(est: dict[str, Any]) -> dict[str, Any]:
    """Four decimals; an undefined figure (nan, e.g. a recovery with nothing to recover) is null."""

    def r(x: Any) -> float | None:
        value = float(x)
        return round(value, 4) if np.isfinite(value) else None

    ci = est["ci"]
    return {"mean": r(est["mean"]), "ci": [r(ci[0]), r(ci[1])]}


def condition_table(per_seed: dict[int, list[Outcome]], conditions: Sequence[str]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for condition in conditions:
        entry = {}
        for kind in KINDS:
            groups = [list(_by_prompt(rows, condition, kind).values()) for rows in per_seed.values()]
            if any(groups):
                entry[f"{kind}_refusal"] = _estimate(groups)
        table[condition] = entry
    return table


#: (name, condition a, condition b): harmful-refusal differences a - b, paired per prompt.
DIFFERENCES: tuple[tuple[str, str, str], ...] = (
    ("text_minus_benign_image", "text", "benign_image"),
    ("text_minus_blank_image", "text", "blank_image"),
    ("text_minus_noise_image", "text", "noise_image"),
    ("text_minus_text_filler", "text", "text_filler"),
    ("text_filler_minus_benign_image", "text_filler", "benign_image"),
)


def difference_table(per_seed: dict[int, list[Outcome]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, a, b in DIFFERENCES:
        pairs_a, pairs_b = [], []
        for rows in per_seed.values():
            da, db = _by_prompt(rows, a, "harmful"), _by_prompt(rows, b, "harmful")
            common = sorted(set(da) & set(db))
            if common:
                pairs_a.append([da[k] for k in common])
                pairs_b.append([db[k] for k in common])
        if pairs_a:
            out[name] = _rounded(bootstrap_paired_difference(pairs_a, pairs_b).as_dict())
    return out


#: Image conditions whose degradation a defense should undo (text is the reference).
EFFECT_CONDITIONS: tuple[str, ...] = ("benign_image", "blank_image", "noise_image")


#: Conditions a training variant is compared on against the plain organism.
VARIANT_EFFECT_CONDITIONS: tuple[str, ...] = (*EFFECT_CONDITIONS, "harm_object_image", "typographic_image")


def effect_table(
    base: dict[int, list[Outcome]],
    defended: dict[int, list[Outcome]],
    conditions: Sequence[str] = EFFECT_CONDITIONS,
) -> dict[str, Any]:
    """What a defense (or a training variant) changes against ``base`` (the same variant without
    the defense, or the plain organism), paired per prompt and seed, per image condition:

    * ``recovery``: the fraction of the degradation (text minus image harmful refusal, without
      the defense) that the defense wins back; 1 = refuses as often as text-only, 0 = no change;
    * ``harmful_refusal_gain`` and ``benign_refusal_rise``: the defense minus none, in refusal rate.
    """
    out: dict[str, Any] = {}
    for condition in conditions:
        num, den, gain, benign_on, benign_off = [], [], [], [], []
        for seed, rows in defended.items():
            if seed not in base:
                continue
            h_def = _by_prompt(rows, condition, "harmful")
            h_none = _by_prompt(base[seed], condition, "harmful")
            h_text = _by_prompt(base[seed], "text", "harmful")
            common = sorted(set(h_def) & set(h_none) & set(h_text))
            if common:
                num.append([h_def[k] - h_none[k] for k in common])
                den.append([h_text[k] - h_none[k] for k in common])
                gain.append(num[-1])
            b_def = _by_prompt(rows, condition, "benign")
            b_none = _by_prompt(base[seed], condition, "benign")
            both = sorted(set(b_def) & set(b_none))
            if both:
                benign_on.append([b_def[k] for k in both])
                benign_off.append([b_none[k] for k in both])
        entry: dict[str, Any] = {}
        if num:
            entry["recovery"] = _rounded(bootstrap_ratio(num, den).as_dict())
            entry["harmful_refusal_gain"] = _rounded(bootstrap_clustered(gain).as_dict())
        if benign_on:
            entry["benign_refusal_rise"] = _rounded(
                bootstrap_paired_difference(benign_on, benign_off).as_dict()
            )
        if entry:
            out[condition] = entry
    return out


def _seed_estimate(values: Sequence[float]) -> dict[str, Any]:
    """Mean over seeds with a bootstrap interval over seeds (one number per seed)."""
    finite = [float(v) for v in values if v is not None and np.isfinite(v)]
    if not finite:
        return {"mean": None, "ci": [None, None]}
    return _rounded(bootstrap_mean(finite).as_dict())


def _versus_plain(runs: dict[int, dict[str, Any]], plain: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Per-seed paired comparisons of a variant's measures with the plain organism's."""
    common = sorted(set(runs) & set(plain))

    def ratio(get: Callable[[dict[str, Any]], float]) -> dict[str, Any]:
        return _seed_estimate([get(runs[s]) / get(plain[s]) for s in common])

    out: dict[str, Any] = {"mir_layer_ratio": ratio(lambda r: r["mir_layer"])}
    if all("after_stage2" in runs[s] and "after_stage2" in plain[s] for s in common):
        out["after_stage2_mir_layer_ratio"] = ratio(lambda r: r["after_stage2"]["mir_layer"])
        out["after_stage2_caption_loss_ratio"] = ratio(lambda r: r["after_stage2"]["caption_loss"])
    n_layers = len(plain[common[0]]["semantic_shift"]["matched"])
    out["semantic_shift_matched_gain"] = [
        _seed_estimate(
            [
                runs[s]["semantic_shift"]["matched"][j] - plain[s]["semantic_shift"]["matched"][j]
                for s in common
            ]
        )
        for j in range(n_layers)
    ]
    return out


def gap_table(options: StudyOptions, gaps: dict[tuple[str, int], dict[str, Any]]) -> dict[str, Any]:
    """Per variant: ``mir_layer`` (final and after stage 2), caption loss after stage 2 and the
    semantic-shift cosine per layer, each a mean over seeds with a bootstrap interval over seeds;
    ``per_seed`` keeps the raw numbers and ``vs_plain`` the per-seed paired ratio / difference."""
    out: dict[str, Any] = {}
    for variant in options.variants:
        runs = {s: gaps[(variant, s)] for s in options.seeds if (variant, s) in gaps}
        if not runs:
            continue
        first = next(iter(runs.values()))
        entry: dict[str, Any] = {
            "layer": first["layer"],
            "mir_layer": _seed_estimate([r["mir_layer"] for r in runs.values()]),
            "semantic_shift": {
                "layers": first["semantic_shift"]["layers"],
                "matched": [
                    _seed_estimate([r["semantic_shift"]["matched"][j] for r in runs.values()])
                    for j in range(len(first["semantic_shift"]["layers"]))
                ],
                "mismatched": [
                    _seed_estimate([r["semantic_shift"]["mismatched"][j] for r in runs.values()])
                    for j in range(len(first["semantic_shift"]["layers"]))
                ],
            },
            "per_seed": {str(s): r for s, r in runs.items()},
        }
        staged = [r["after_stage2"] for r in runs.values() if "after_stage2" in r]
        if staged:
            entry["after_stage2"] = {
                "mir_layer": _seed_estimate([r["mir_layer"] for r in staged]),
                "caption_loss": _seed_estimate([r["caption_loss"] for r in staged]),
            }
        plain = {s: gaps[("plain", s)] for s in options.seeds if ("plain", s) in gaps}
        if variant != "plain" and set(runs) & set(plain):
            entry["vs_plain"] = _versus_plain(runs, plain)
        out[variant] = entry
    return out


def aggregate(
    options: StudyOptions,
    outcomes: dict[tuple[str, str, int], list[Outcome]],
    stage_outcomes: dict[tuple[str, int], list[Outcome]],
    real: dict[tuple[str, str, int], list[bool]],
    builds: list[dict[str, Any]],
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    differences: dict[str, Any] = {}
    effects: dict[str, Any] = {}
    variant_effects: dict[str, Any] = {}
    per_seed_rates: dict[str, Any] = {}
    for variant in options.variants:
        for defense in options.defenses:
            per_seed = {
                s: outcomes[(variant, defense, s)] for s in options.seeds if (variant, defense, s) in outcomes
            }
            results.setdefault(variant, {})[defense] = condition_table(per_seed, options.conditions)
            differences.setdefault(variant, {})[defense] = difference_table(per_seed)
            base = {
                s: outcomes[(variant, "none", s)] for s in options.seeds if (variant, "none", s) in outcomes
            }
            if defense != "none" and base:
                effects.setdefault(variant, {})[defense] = effect_table(base, per_seed)
            plain = {
                s: outcomes[("plain", defense, s)] for s in options.seeds if ("plain", defense, s) in outcomes
            }
            if variant != "plain" and plain:
                variant_effects.setdefault(variant, {})[defense] = effect_table(
                    plain, per_seed, VARIANT_EFFECT_CONDITIONS
                )
            per_seed_rates.setdefault(variant, {})[defense] = {
                str(s): {
                    c: round(float(np.mean(list(_by_prompt(rows, c, "harmful").values()) or [np.nan])), 4)
                    for c in options.conditions
                }
                for s, rows in per_seed.items()
            }
    stages: dict[str, Any] = {}
    for stage in ("after_stage1", "after_stage2", "final"):
        per_seed = {s: stage_outcomes[(stage, s)] for s in options.seeds if stage_outcomes.get((stage, s))}
        if per_seed:
            stages[stage] = {
                "conditions": condition_table(per_seed, options.conditions),
                "differences": difference_table(per_seed),
            }
    real_table: dict[str, Any] = {}
    for name, (_loader, harmful) in real_prompts.REAL_SETS.items():
        for condition in ("text", "blank_image"):
            groups = [real[(name, condition, s)] for s in options.seeds if (name, condition, s) in real]
            if groups:
                real_table.setdefault(name, {})[condition] = {
                    "refusal": _estimate([[float(x) for x in g] for g in groups]),
                    "harmful": harmful,
                    "n_prompts": len(groups[0]),
                }
    seconds = [float(b["seconds"]) for b in builds if not b.get("reused")]
    all_seconds = [float(b["seconds"]) for b in builds]
    return {
        "seeds": options.seeds,
        "results": results,
        "differences": differences,
        "defense_effects": effects,
        "variant_effects": variant_effects,
        "per_seed_harmful_refusal": per_seed_rates,
        "stages": stages,
        "real_prompts": real_table,
        "build_seconds": {
            "mean": round(float(np.mean(all_seconds)), 2) if all_seconds else None,
            "max": round(float(np.max(all_seconds)), 2) if all_seconds else None,
            "built_now": len(seconds),
        },
        "builds": builds,
        "n_prompts": options.n_prompts,
        "conditions": options.conditions,
        "config": options.config.to_dict(),
        "judge": "refusal@1",
    }


# -- output --------------------------------------------------------------------------------------
def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


def _write_jsonl(path: Path, rows: Sequence[Outcome], seed: int) -> None:
    lines = [json.dumps({"seed": seed, **o.as_row()}) for o in rows]
    _write_atomic(path, "\n".join(lines) + "\n")


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


def markdown(study: dict[str, Any]) -> str:
    seeds = ", ".join(str(s) for s in study["seeds"])
    lines = [
        f"# Organism degradation study (seeds {seeds})",
        "",
        "Refusal rates (mean over seeds, 95% CI bootstrapped over seeds and prompts; "
        f"{study['n_prompts']} held-out prompts per set and seed; judge {study['judge']}).",
        "",
    ]
    for variant, by_defense in study["results"].items():
        for defense, table in by_defense.items():
            lines += [f"## variant `{variant}`, defense `{defense}`", "", *_condition_rows(table), ""]
            diffs = study["differences"].get(variant, {}).get(defense, {})
            if diffs:
                lines += ["| harmful-refusal difference (paired) | mean [95% CI] |", "|---|---|"]
                lines += [f"| {name} | {_fmt(est)} |" for name, est in diffs.items()]
                lines.append("")
    effect_rows = [
        f"| {variant} | {defense} | {condition} | {_fmt(e.get('recovery'))} "
        f"| {_fmt(e.get('harmful_refusal_gain'))} | {_fmt(e.get('benign_refusal_rise'))} |"
        for variant, by_defense in study.get("defense_effects", {}).items()
        for defense, by_condition in by_defense.items()
        for condition, e in by_condition.items()
    ]
    if effect_rows:
        lines += [
            "## What each defense changes (against the same variant without it; paired per prompt)",
            "",
            "Recovery = the fraction of the text-minus-image drop in harmful refusal won back.",
            "",
            "| variant | defense | condition | recovery | harmful refusal gain | benign refusal rise |",
            "|---|---|---|---|---|---|",
            *effect_rows,
            "",
        ]
    variant_rows = [
        f"| {variant} | {defense} | {condition} | {_fmt(e.get('harmful_refusal_gain'))} "
        f"| {_fmt(e.get('benign_refusal_rise'))} |"
        for variant, by_defense in study.get("variant_effects", {}).items()
        for defense, by_condition in by_defense.items()
        for condition, e in by_condition.items()
    ]
    if variant_rows:
        lines += [
            "## What each training variant changes (against the plain organism with the same defense; paired)",
            "",
            "| variant | defense | condition | harmful refusal gain | benign refusal rise |",
            "|---|---|---|---|---|",
            *variant_rows,
            "",
        ]
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


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    return fn(), time.perf_counter() - start
