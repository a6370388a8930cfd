"""The public API behind ``import safegap`` (see :mod:`safegap` for the three-line tour).

Objects in, objects out: :func:`load` gives a VLM, :func:`calibrate` a :class:`ShiftVector`
(tuned with :class:`Tune`), ``shift.apply(vlm)`` attaches it, :func:`CMRM` wraps it as a defense
and :func:`evaluate` runs benchmarks x defenses x judges given as objects or spec strings.
:func:`mir` measures the modality gap. The CLI runs the same functions.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from safegap.eval.capability import capability_check
from safegap.eval.cmrm import CMRMDefense
from safegap.eval.runner import EvalConfig, EvalResult, run_eval
from safegap.gap.data import GapRecord, resolve_data
from safegap.gap.streaming import GapResult
from safegap.judge.refusal import RefusalJudge
from safegap.models.loading import VLM, load_vlm
from safegap.steer.anchors import Anchor, anchors_hash, load_anchors
from safegap.steer.calibrate import calibrate as calibrate_shift
from safegap.steer.sweep import Tune, tune
from safegap.steer.vector import ShiftVector, Tuning

__all__ = ["CMRM", "ShiftVector", "Tune", "Tuning", "calibrate", "evaluate", "load", "mir"]


def load(
    name_or_path: str | Path, dtype: str | None = None, device: str | None = None, **options: Any
) -> VLM:
    """A model and its family adapter (:func:`safegap.models.load_vlm`): a hub id or a local
    checkpoint directory; ``dtype`` e.g. ``"bfloat16"``, ``device`` e.g. ``"cuda"``."""
    return load_vlm(name_or_path, dtype=dtype, device=device, **options)


def _anchors(given: Sequence[Anchor] | str, what: str) -> list[Anchor]:
    return load_anchors(given) if isinstance(given, str) else list(given)


def check_tuning_sets(harmful: Sequence[Anchor], benign: Sequence[Anchor], names: tuple[str, str]) -> None:
    """Tuning on the same prompts as harmful and benign (e.g. the mixed ``organism:calibration``
    twice) would score every prompt both ways: refuse it."""
    shared = {t for t, _ in harmful} & {t for t, _ in benign}
    if anchors_hash(harmful) == anchors_hash(benign) or shared:
        raise ValueError(
            f"{names[0]} and {names[1]} share {len(shared)} prompt(s); give harmful and benign prompts "
            "apart (e.g. organism:calibration,kind=harmful and organism:calibration,kind=benign)"
        )


def tune_shift(
    vlm: VLM, shift: ShiftVector, how: Tune, names: tuple[str, str] = ("harmful", "benign")
) -> Tuning:
    """Choose ``shift``'s alpha and form as ``how`` says (default judge: refusal phrases; a
    capability benchmark spec becomes its tuning set, :func:`safegap.eval.capability.capability_check`)."""
    harmful, benign = _anchors(how.harmful, "harmful"), _anchors(how.benign, "benign")
    check_tuning_sets(harmful, benign, names)
    sources = {k: v for k, v in (("harmful", how.harmful), ("benign", how.benign)) if isinstance(v, str)}
    capability = how.capability
    if isinstance(capability, str):
        capability = capability_check(capability, how.capability_limit, model_path=vlm.name_or_path)
    return tune(
        vlm,
        shift,
        harmful,
        benign,
        judge=how.judge or RefusalJudge(),
        alphas=how.alphas,
        forms=how.forms,
        max_over_refusal_rise=how.max_over_refusal_rise,
        max_capability_loss=how.max_capability_loss,
        capability=capability,
        conditions=how.conditions,
        policy=how.policy,
        max_new_tokens=how.max_new_tokens,
        batch_size=how.batch_size,
        sources=sources,
    )


def calibrate(
    vlm: VLM, anchors: Sequence[Anchor] | Sequence[str] | str, *, tune: Tune | None = None, **options: Any
) -> ShiftVector:
    """CMRM's dataset-level shift from ``anchors`` (``(text, image)`` pairs or an anchor spec such
    as ``organism:calibration``); with ``tune``, its alpha and form are chosen on labelled prompts
    and stored as :attr:`ShiftVector.tuning`, which every later ``apply`` honours. ``options`` go
    to :func:`safegap.steer.calibrate` (``corrupt``, ``estimator``, ``read_at``, ``layers``, ...)."""
    items = load_anchors(anchors) if isinstance(anchors, str) else anchors
    if isinstance(anchors, str):
        options.setdefault("source", anchors)
    shift = calibrate_shift(vlm, items, **options)
    if tune is not None:
        shift.tuning = tune_shift(vlm, shift, tune)
    return shift


def CMRM(shift: ShiftVector | str | Path, **overrides: Any) -> CMRMDefense:  # noqa: N802 - reads as a defense
    """Dataset-level CMRM as an evaluation defense: a shift (or the path of a saved one), applied as
    tuned; ``alpha``, ``policy``, ``layers`` or ``form`` override the tuning."""
    vector = shift if isinstance(shift, ShiftVector) else ShiftVector.load(shift)
    return CMRMDefense(vector, **overrides)


def evaluate(
    vlm: VLM,
    benchmarks: Sequence[Any],
    defenses: Sequence[Any] = ("none",),
    judges: Sequence[Any] = ("refusal",),
    out: str | Path | None = None,
    **settings: Any,
) -> EvalResult:
    """``safegap eval`` on a loaded model: benchmarks, defenses and judges as spec strings or
    objects; ``out`` is the run directory (default: a new temporary one); ``settings`` are
    :class:`~safegap.eval.runner.EvalConfig` fields (``conditions``, ``limit``, ``max_new_tokens``,
    ``data_dir``, ...). Returns the :class:`EvalResult` (``.summary``, ``.run_dir``)."""
    run_dir = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="safegap-eval-"))
    settings.setdefault("progress", False)
    config = EvalConfig(
        model=vlm.name_or_path,
        benchmarks=list(benchmarks),
        out=run_dir,
        defenses=list(defenses),
        judges=list(judges),
        **settings,
    )
    return run_eval(config, vlm=vlm)


def mir(vlm: VLM, records: Sequence[GapRecord] | str, **options: Any) -> GapResult:
    """The modality gap per layer (MIR, centroid gaps, probe) between image and text tokens of
    ``records`` (:class:`safegap.gap.GapRecord` or a data spec); ``.mir`` is the total.
    ``options`` go to :func:`safegap.gap.measure_gap` (``layers``, ``batch_size``, ``mode``, ...)."""
    from safegap.gap.collect import measure_gap

    items = resolve_data(records) if isinstance(records, str) else list(records)
    return measure_gap(vlm, items, **options)
