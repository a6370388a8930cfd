"""What a degradation study runs (the plan): the variant and defense registries, the
calibration split, the options, and where each variant's organism is built or found.

Variants (how the organism is trained) and defenses (how it generates) plug in through two
registries, so the training and CMRM work add rows without touching the study:

* ``VARIANTS[name](config, world) -> Variant``: extra loss terms for stages 2/3 and/or a changed
  config (``plain`` is the recipe as is).
* ``ORGANISM_DEFENSES[name](vlm, calibration) -> Defense`` (``none`` is plain generation); the
  study hands the built defense to eval's runner under its name.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from safegap.eval.defenses import Defense, NoDefense
from safegap.models.loading import VLM
from safegap.organism import scenes
from safegap.organism.build import BuildReport, build_organism, default_cache_dir
from safegap.organism.config import OrganismConfig
from safegap.organism.evaluate import CONDITIONS
from safegap.organism.names import parse_names
from safegap.organism.regimes import REGIMES, parse_regimes
from safegap.organism.world import World
from safegap.train.hooks import ExtraLoss


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


# -- options and organisms ---------------------------------------------------------------------

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


def check_options(options: StudyOptions) -> None:
    """One-line errors for unknown variants, defenses, regimes and conditions (before any work)."""
    parse_names(options.variants, VARIANTS, "variant")
    parse_names(options.defenses, ORGANISM_DEFENSES, "defense")
    parse_regimes(options.regimes)
    for condition in options.conditions:
        if condition not in CONDITIONS:
            raise ValueError(f"unknown condition {condition!r}; known: {', '.join(CONDITIONS)}")
