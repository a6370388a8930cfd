"""CMRM as evaluation defenses (the steering itself is :mod:`safegap.steer`, which imports nothing
from evaluation).

* ``cmrm:PATH[,alpha=A,policy=P,layers=L,form=full|increments]`` -- dataset-level, from a saved
  shift. A shift tuned at calibration (``safegap calibrate --tune-harmful/--tune-benign``) is
  applied as tuned (:attr:`ShiftVector.tuning`), exactly as ``shift.apply()`` and ``safegap
  generate --shift`` apply it; options given in the spec override the tuning.
* ``cmrm_sample[:corrupt=blank|noise,alpha=A,policy=P,layers=L]`` -- sample-level.

``policy`` is the steering position policy (``last``, ``last+decode``, ``prefill``, ``all``;
:mod:`safegap.steer.intervene`); ``layers`` is the one layer grammar of :mod:`safegap.specs`
(``all``, ``N``, ``A-B`` or a comma list; negatives count from the model's last layer). :class:`CMRMDefense` is also what :func:`safegap.CMRM` builds from a shift object.

For the organism study, :func:`cmrm_from_anchors` and :func:`cmrm_sample_defense` build defenses
from a VLM and calibration anchors in one call; :func:`tuned_cmrm_defense` and
:func:`tuned_sample_defense` also choose alpha (and the vector's form) on labelled calibration
prompts with :func:`safegap.steer.sweep.tune`, recording how in the defense's ``tuning``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from safegap.errors import UserError, finite_float
from safegap.eval.defenses import DEFENSES, Defense
from safegap.judge.base import Judge
from safegap.judge.refusal import RefusalJudge
from safegap.models.adapter import ImagesArg
from safegap.models.generation import generate
from safegap.models.loading import VLM
from safegap.specs import Layers, Spec, resolve_within
from safegap.steer.anchors import Anchor
from safegap.steer.calibrate import calibrate
from safegap.steer.intervene import DEFAULT_POLICY, resolve_policy
from safegap.steer.sample import generate_sample_level
from safegap.steer.sweep import tune
from safegap.steer.vector import FORMS, ShiftVector


def _alpha(options: dict[str, str], spec: Spec) -> float | None:
    if "alpha" not in options:
        return None
    try:
        return finite_float(options["alpha"], "alpha")
    except ValueError as exc:
        raise UserError(f"defense {spec}: {exc}") from None


def spec_layers(spec: Spec, layers: str, available: Sequence[int], num_layers: int) -> list[int]:
    """The indices of a ``layers=`` option; one the model or vector does not have fails when the
    defense is built, not as a run of errored samples."""
    try:
        return resolve_within(layers, available, num_layers)
    except ValueError as exc:
        raise UserError(f"defense {spec}: {exc}") from None


def _check_options(spec: Spec, valid: tuple[str, ...]) -> None:
    if "positions" in spec.options:
        raise UserError(f"defense {spec}: positions= is now policy= (the steering position policy)")
    spec.check_options(valid, "defense")


def shift_digest(shift: ShiftVector) -> str:
    """12 hex digits naming a shift held in memory by its tensors and tuning (a run's identity)."""
    digest = hashlib.sha256()
    for i, v in shift.vectors.items():
        digest.update(f"{i}:".encode())
        digest.update(v.detach().float().cpu().contiguous().numpy().tobytes())
    digest.update((shift.tuning.describe() if shift.tuning is not None else "untuned").encode())
    return digest.hexdigest()[:12]


@dataclass
class CMRMDefense:
    """Dataset-level CMRM: generate inside ``shift.apply(vlm, ...)``.

    ``alpha``, ``policy``, ``layers`` and ``form`` left at ``None`` come from the shift's tuning
    (as in :meth:`ShiftVector.apply`), so a tuned shift generates here what it generates anywhere.
    """

    shift: ShiftVector
    alpha: float | None = None
    policy: str | None = None
    layers: Layers | None = None
    form: str | None = None
    id: str = ""
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.policy is not None:
            resolve_policy(self.policy)
        if self.form is not None and self.form not in FORMS:
            raise ValueError(f"CMRM form {self.form!r}: use {' or '.join(FORMS)}")
        if not self.id:
            given = [f"{k}={v}" for k in ("alpha", "policy", "form") if (v := getattr(self, k)) is not None]
            self.id = ",".join([f"cmrm:shift-{shift_digest(self.shift)}", *given])

    @property
    def tuning(self) -> dict[str, Any] | None:
        """The shift's tuning as saved (how alpha and the form were chosen), if it was tuned."""
        return self.shift.tuning.as_dict() if self.shift.tuning is not None else None

    def generate(
        self,
        vlm: VLM,
        texts: Sequence[str],
        images: ImagesArg,
        max_new_tokens: int,
        system: str | None = None,
    ) -> list[str]:
        with self.shift.apply(
            vlm,
            alpha=self.alpha,
            layers=self.layers,
            policy=self.policy,
            form=self.form,  # type: ignore[arg-type]
        ):
            return generate(
                vlm, texts, images, max_new_tokens=max_new_tokens, system=system, batch_size=self.batch_size
            )


@dataclass
class SampleCMRMDefense:
    """Sample-level CMRM (fused prefill; see :mod:`safegap.steer.sample`)."""

    alpha: float = 1.0
    corrupt: str = "blank"
    policy: str = DEFAULT_POLICY
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
        steering = {"alpha": self.alpha, "corrupt": self.corrupt, "policy": self.policy}
        return generate_sample_level(
            vlm,
            texts,
            images,
            max_new_tokens=max_new_tokens,
            system=system,
            batch_size=self.batch_size,
            layers=self.layers,
            **steering,
        )


def make_cmrm(spec: Spec, vlm: VLM) -> Defense:
    if not spec.arg:
        raise ValueError(f"defense {spec}: give the shift file, e.g. cmrm:shift.safetensors,alpha=1.0")
    _check_options(spec, ("alpha", "form", "layers", "policy"))
    shift = ShiftVector.load(spec.arg, vlm=vlm)
    policy = spec.options.get("policy")
    if policy is not None:
        resolve_policy(policy)
    form = spec.options.get("form")
    if form is not None and form not in FORMS:
        raise ValueError(f"defense {spec}: form={form!r}; use full or increments")
    layers = (
        spec_layers(spec, spec.options["layers"], shift.layers, vlm.adapter.num_layers)
        if "layers" in spec.options
        else None
    )
    tuned = f" (tuned: {shift.tuning.describe()})" if shift.tuning is not None else ""
    return CMRMDefense(shift, _alpha(spec.options, spec), policy, layers, form, id=f"{spec}{tuned}")


def make_cmrm_sample(spec: Spec, vlm: VLM) -> Defense:
    if spec.arg:
        raise ValueError(
            f"defense {spec}: cmrm_sample takes only options (corrupt=, alpha=, policy=, layers=)"
        )
    _check_options(spec, ("alpha", "corrupt", "layers", "policy"))
    corrupt = spec.options.get("corrupt", "blank")
    if corrupt not in ("blank", "noise"):
        raise ValueError(f"defense {spec}: corrupt={corrupt!r}; use blank or noise")
    policy = spec.options.get("policy", DEFAULT_POLICY)
    resolve_policy(policy)
    num_layers = vlm.adapter.num_layers
    layers = spec_layers(spec, spec.options.get("layers", "all"), range(num_layers), num_layers)
    alpha = _alpha(spec.options, spec)
    return SampleCMRMDefense(1.0 if alpha is None else alpha, corrupt, policy, layers, id=str(spec))


def cmrm_from_anchors(
    vlm: VLM,
    anchors: Sequence[Anchor],
    alpha: float = 1.0,
    policy: str = DEFAULT_POLICY,
    **calibrate_options: Any,
) -> CMRMDefense:
    """Calibrate on ``anchors`` (``(text, image-or-None)``) and wrap as a defense (organism hook)."""
    shift = calibrate(vlm, anchors, **calibrate_options)
    return CMRMDefense(shift, alpha, policy, id=f"cmrm:calibrated,alpha={alpha},policy={policy}")


def cmrm_sample_defense(
    vlm: VLM,
    anchors: Sequence[Anchor] | None = None,
    alpha: float = 1.0,
    corrupt: str = "blank",
    policy: str = DEFAULT_POLICY,
) -> SampleCMRMDefense:
    """Sample-level CMRM needs no calibration; ``anchors`` is accepted for a uniform factory signature."""
    del vlm, anchors
    return SampleCMRMDefense(alpha, corrupt, policy, id=f"cmrm_sample:corrupt={corrupt},alpha={alpha}")


def tuned_cmrm_defense(
    vlm: VLM,
    anchors: Sequence[Anchor],
    harmful: Sequence[Anchor],
    benign: Sequence[Anchor],
    *,
    policy: str = DEFAULT_POLICY,
    batch_size: int = 8,
    judge: Judge | None = None,
    tune_options: dict[str, Any] | None = None,
    **calibrate_options: Any,
) -> CMRMDefense:
    """Calibrate on ``anchors``, choose alpha and form on ``harmful``/``benign``
    (:func:`safegap.steer.sweep.tune`, judged by ``judge``: default the refusal-phrase judge)."""
    shift = calibrate(vlm, anchors, **calibrate_options)
    shift.tuning = tune(
        vlm,
        shift,
        harmful,
        benign,
        judge=judge or RefusalJudge(),
        policy=policy,
        batch_size=batch_size,
        **(tune_options or {}),
    )
    t = shift.tuning
    label = f"cmrm:calibrated,alpha={t.alpha},form={t.form},policy={t.policy}"
    return CMRMDefense(shift, id=label, batch_size=batch_size)


def tuned_sample_defense(
    vlm: VLM,
    harmful: Sequence[Anchor],
    benign: Sequence[Anchor],
    *,
    corrupt: str = "blank",
    policy: str = DEFAULT_POLICY,
    batch_size: int = 8,
    judge: Judge | None = None,
    tune_options: dict[str, Any] | None = None,
) -> SampleCMRMDefense:
    """Sample-level CMRM with alpha chosen on ``harmful``/``benign`` (:func:`safegap.steer.sweep.tune`)."""
    options = {"forms": ("full",), **(tune_options or {})}
    tuning = tune(
        vlm,
        "sample",
        harmful,
        benign,
        judge=judge or RefusalJudge(),
        policy=policy,
        batch_size=batch_size,
        corrupt=corrupt,  # type: ignore[arg-type]
        **options,
    )
    return SampleCMRMDefense(
        tuning.alpha,
        corrupt,
        policy,
        id=f"cmrm_sample:corrupt={corrupt},alpha={tuning.alpha},policy={policy}",
        batch_size=batch_size,
        tuning=tuning.as_dict(),
    )


DEFENSES["cmrm"] = make_cmrm
DEFENSES["cmrm_sample"] = make_cmrm_sample
