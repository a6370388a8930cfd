"""CMRM as evaluation defenses.

* ``cmrm:PATH[,alpha=A,positions=P,layers=L,form=full|increments]`` -- dataset-level, from a saved
  shift; ``form=increments`` applies :meth:`ShiftVector.increments`.
* ``cmrm_sample[:corrupt=blank|noise,alpha=A,positions=P,layers=L]`` -- sample-level.

Registration: ``safegap.eval.defenses`` imports this module on its last line, so the names are
in ``DEFENSES`` whenever the registry is; this module imports the registry, never the reverse
at import time of ``safegap.steer`` (which stays free of evaluation code).

``layers`` is ``all``, one index ``N`` or an inclusive range ``A-B``. For the organism study,
:func:`cmrm_from_anchors` and :func:`cmrm_sample_defense` build defenses from a VLM and
calibration anchors in one call; :func:`tuned_cmrm_defense` and :func:`tuned_sample_defense`
also choose alpha (and the vector's form) on labelled calibration prompts with
:func:`safegap.steer.sweep.select_alpha`, recording how in the defense's ``tuning``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from safegap.errors import UserError, finite_float
from safegap.eval.defenses import DEFENSES, Defense
from safegap.judge.refusal import RefusalJudge
from safegap.models.adapter import ImagesArg
from safegap.models.generation import generate
from safegap.models.loading import VLM
from safegap.specs import Layers, Spec, resolve_within
from safegap.steer.anchors import Anchor
from safegap.steer.calibrate import calibrate
from safegap.steer.intervene import DEFAULT_POSITIONS, resolve_policy
from safegap.steer.sample import generate_sample_level
from safegap.steer.sweep import DEFAULT_ALPHAS, SweepPoint, alpha_sweep, select_alpha
from safegap.steer.vector import ShiftVector


def _alpha(options: dict[str, str], spec: Spec) -> float:
    try:
        return finite_float(options.get("alpha", "1.0"), "alpha")
    except ValueError as exc:
        raise UserError(f"defense {spec}: {exc}") from None


def spec_layers(spec: Spec, layers: str, available: Sequence[int], num_layers: int) -> list[int]:
    """The indices of a ``layers=`` option; one the model or vector does not have fails when the
    defense is built, not as a run of errored samples."""
    try:
        return resolve_within(layers, available, num_layers)
    except ValueError as exc:
        raise UserError(f"defense {spec}: {exc}") from None


@dataclass
class CMRMDefense:
    """Dataset-level CMRM: generate inside ``shift.apply``."""

    shift: ShiftVector
    alpha: float = 1.0
    positions: str = DEFAULT_POSITIONS
    layers: Layers = "all"
    id: str = "cmrm"
    batch_size: int = 8
    apply_options: dict[str, Any] = field(default_factory=dict)
    #: How alpha and the form were chosen (:class:`Tuning` as a dict), if they were tuned.
    tuning: dict[str, Any] | None = None

    def generate(
        self,
        vlm: VLM,
        texts: Sequence[str],
        images: ImagesArg,
        max_new_tokens: int,
        system: str | None = None,
    ) -> list[str]:
        with self.shift.apply(
            vlm, alpha=self.alpha, layers=self.layers, positions=self.positions, **self.apply_options
        ):
            return generate(
                vlm, texts, images, max_new_tokens=max_new_tokens, system=system, batch_size=self.batch_size
            )


@dataclass
class SampleCMRMDefense:
    """Sample-level CMRM (fused prefill; see :mod:`safegap.steer.sample`)."""

    alpha: float = 1.0
    corrupt: str = "blank"
    positions: str = DEFAULT_POSITIONS
    layers: Layers = "all"
    id: str = "cmrm_sample"
    batch_size: int = 8
    tuning: dict[str, Any] | None = None

    def generate(
        self,
        vlm: VLM,
        texts: Sequence[str],
        images: ImagesArg,
        max_new_tokens: int,
        system: str | None = None,
    ) -> list[str]:
        return generate_sample_level(
            vlm,
            texts,
            images,
            max_new_tokens=max_new_tokens,
            system=system,
            batch_size=self.batch_size,
            alpha=self.alpha,
            corrupt=self.corrupt,
            positions=self.positions,
            layers=self.layers,
        )


def make_cmrm(spec: Spec, vlm: VLM) -> Defense:
    if not spec.arg:
        raise ValueError(f"defense {spec}: give the shift file, e.g. cmrm:shift.safetensors,alpha=1.0")
    spec.check_options(("alpha", "positions", "layers", "form"), "defense")
    shift = ShiftVector.load(spec.arg, vlm=vlm)
    # a vector tuned at calibration (safegap calibrate --tune-harmful/--tune-benign) brings its
    # alpha, form and positions; options given in the spec win
    tuned = {k: str(v) for k, v in (shift.tuning or {}).items() if k in ("alpha", "form", "positions")}
    options = {**tuned, **spec.options}
    positions = options.get("positions", DEFAULT_POSITIONS)
    resolve_policy(positions)
    form = options.get("form", "full")
    if form not in ("full", "increments"):
        raise ValueError(f"defense {spec}: form={form!r}; use full or increments")
    if form == "increments":
        shift = shift.increments()
    layers = spec_layers(spec, options.get("layers", "all"), shift.layers, vlm.adapter.num_layers)
    label = str(spec) if not tuned else f"{spec} (tuned: {', '.join(f'{k}={v}' for k, v in tuned.items())})"
    alpha = _alpha(options, spec)
    return CMRMDefense(shift, alpha, positions, layers, id=label, tuning=shift.tuning)


def make_cmrm_sample(spec: Spec, vlm: VLM) -> Defense:
    if spec.arg:
        raise ValueError(
            f"defense {spec}: cmrm_sample takes only options (corrupt=, alpha=, positions=, layers=)"
        )
    spec.check_options(("alpha", "positions", "layers", "corrupt"), "defense")
    corrupt = spec.options.get("corrupt", "blank")
    if corrupt not in ("blank", "noise"):
        raise ValueError(f"defense {spec}: corrupt={corrupt!r}; use blank or noise")
    positions = spec.options.get("positions", DEFAULT_POSITIONS)
    resolve_policy(positions)
    num_layers = vlm.adapter.num_layers
    layers = spec_layers(spec, spec.options.get("layers", "all"), range(num_layers), num_layers)
    return SampleCMRMDefense(_alpha(spec.options, spec), corrupt, positions, layers, id=str(spec))


def cmrm_from_anchors(
    vlm: VLM,
    anchors: Sequence[Anchor],
    alpha: float = 1.0,
    positions: str = DEFAULT_POSITIONS,
    **calibrate_options: Any,
) -> CMRMDefense:
    """Calibrate on ``anchors`` (``(text, image-or-None)``) and wrap as a defense (organism hook)."""
    shift = calibrate(vlm, anchors, **calibrate_options)
    return CMRMDefense(shift, alpha, positions, id=f"cmrm:calibrated,alpha={alpha},positions={positions}")


def cmrm_sample_defense(
    vlm: VLM,
    anchors: Sequence[Anchor] | None = None,
    alpha: float = 1.0,
    corrupt: str = "blank",
    positions: str = DEFAULT_POSITIONS,
) -> SampleCMRMDefense:
    """Sample-level CMRM needs no calibration; ``anchors`` is accepted for a uniform factory signature."""
    del vlm, anchors
    return SampleCMRMDefense(alpha, corrupt, positions, id=f"cmrm_sample:corrupt={corrupt},alpha={alpha}")


@dataclass(frozen=True)
class Tuning:
    """How a CMRM defense's strength was chosen on labelled calibration prompts."""

    alpha: float
    form: str
    point: SweepPoint
    sweeps: dict[str, list[SweepPoint]]
    max_over_refusal_rise: float
    positions: str = DEFAULT_POSITIONS

    def as_dict(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "form": self.form,
            "positions": self.positions,
            "rule": "lowest unsafe rate with over-refusal <= unsteered + max_over_refusal_rise",
            "max_over_refusal_rise": self.max_over_refusal_rise,
            "chosen": self.point.as_dict(),
            "sweeps": {form: [p.as_dict() for p in points] for form, points in self.sweeps.items()},
        }


FORMS: tuple[str, ...] = ("full", "increments")


def tune_cmrm(
    vlm: VLM,
    shift: ShiftVector | str,
    harmful: Sequence[Anchor],
    benign: Sequence[Anchor],
    *,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    forms: Sequence[str] = FORMS,
    max_over_refusal_rise: float = 0.05,
    positions: str = DEFAULT_POSITIONS,
    max_new_tokens: int = 16,
    batch_size: int = 8,
    corrupt: str = "blank",
    judge: RefusalJudge | None = None,
) -> Tuning:
    """Sweep alpha (for a vector: in each of ``forms``) on ``harmful`` and ``benign`` prompts with
    images and pick with :func:`select_alpha`; ties between forms go to the earlier one.

    ``shift="sample"`` tunes sample-level CMRM (which has one form, ``full``; ``corrupt`` is its
    meaningless image).
    """
    if 0.0 not in alphas:
        alphas = (0.0, *alphas)
    unknown = sorted(set(forms) - set(FORMS))
    if unknown or not forms:
        raise ValueError(f"forms {list(forms)}: choose from {', '.join(FORMS)}")
    sweeps: dict[str, list[SweepPoint]] = {}
    extra: dict[str, Any] = {"corrupt": corrupt} if isinstance(shift, str) else {}
    for form in ["full"] if isinstance(shift, str) else forms:
        vector: ShiftVector | str = shift
        if isinstance(shift, ShiftVector) and form == "increments":
            vector = shift.increments()
        sweeps[form] = alpha_sweep(
            vlm,
            vector,  # type: ignore[arg-type]
            harmful,
            benign,
            alphas,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            positions=positions,
            judge=judge,
            **extra,
        )
    picks = {form: select_alpha(points, max_over_refusal_rise) for form, points in sweeps.items()}
    order = list(sweeps)
    form = min(order, key=lambda f: (picks[f].unsafe_rate, picks[f].alpha, order.index(f)))
    return Tuning(picks[form].alpha, form, picks[form], sweeps, max_over_refusal_rise, positions)


def tuned_cmrm_defense(
    vlm: VLM,
    anchors: Sequence[Anchor],
    harmful: Sequence[Anchor],
    benign: Sequence[Anchor],
    *,
    positions: str = DEFAULT_POSITIONS,
    batch_size: int = 8,
    tune_options: dict[str, Any] | None = None,
    **calibrate_options: Any,
) -> CMRMDefense:
    """Calibrate on ``anchors``, choose alpha and form on ``harmful``/``benign`` (:func:`tune_cmrm`)."""
    shift = calibrate(vlm, anchors, **calibrate_options)
    tuning = tune_cmrm(
        vlm, shift, harmful, benign, positions=positions, batch_size=batch_size, **(tune_options or {})
    )
    shift.tuning = tuning.as_dict()
    vector = shift.increments() if tuning.form == "increments" else shift
    return CMRMDefense(
        vector,
        tuning.alpha,
        positions,
        id=f"cmrm:calibrated,alpha={tuning.alpha},form={tuning.form},positions={positions}",
        batch_size=batch_size,
        tuning=shift.tuning,
    )


def tuned_sample_defense(
    vlm: VLM,
    harmful: Sequence[Anchor],
    benign: Sequence[Anchor],
    *,
    corrupt: str = "blank",
    positions: str = DEFAULT_POSITIONS,
    batch_size: int = 8,
    tune_options: dict[str, Any] | None = None,
) -> SampleCMRMDefense:
    """Sample-level CMRM with alpha chosen on ``harmful``/``benign`` (:func:`tune_cmrm`)."""
    options = {"forms": ("full",), **(tune_options or {})}
    tuning = tune_cmrm(
        vlm, "sample", harmful, benign, positions=positions, batch_size=batch_size, corrupt=corrupt, **options
    )
    return SampleCMRMDefense(
        tuning.alpha,
        corrupt,
        positions,
        id=f"cmrm_sample:corrupt={corrupt},alpha={tuning.alpha},positions={positions}",
        batch_size=batch_size,
        tuning=tuning.as_dict(),
    )


DEFENSES["cmrm"] = make_cmrm
DEFENSES["cmrm_sample"] = make_cmrm_sample
