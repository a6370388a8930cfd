"""Choosing CMRM's strength: ``alpha_sweep`` (harmful refusal, over-refusal and, given a
capability set, capability per ``alpha`` and image condition), ``select_alpha`` (the rule) and
``tune`` (sweep each form, pick, return a :class:`Tuning`).

Unsafe = a harmful prompt the judge calls unsafe (for the refusal-phrase judge: *not* refused, an
upper bound on harm); over-refusal = a benign prompt the judge calls a refusal; capability = the
mean score of a :class:`CapabilityCheck`'s items (built from a capability benchmark by
:func:`safegap.eval.capability.capability_check`; steer imports no evaluation code, so the
caller builds it, as it passes the judge).

Each sweep point is read in its *worst* image condition (:data:`TUNE_CONDITIONS`: the prompts'
own images, a blank or a noise image in their place, or no image), as the frontier does. The
alpha is chosen by the frontier's rule (:func:`safegap.selection.select`, one implementation):
the largest harmful-refusal recovery over alpha 0 with capability loss <= ``max_capability_loss``
(checked only with a capability set; the tuning record says when it was not) and worst-condition
over-refusal <= alpha 0's + ``max_over_refusal_rise``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from PIL import Image

from safegap.judge.base import Judge, JudgeInput
from safegap.models.generation import generate
from safegap.models.loading import VLM
from safegap.selection import (
    BASELINE,
    MAX_CAPABILITY_LOSS,
    MAX_OVER_REFUSAL_RISE,
    RULE,
    Estimate,
    Point,
    Selection,
    check_bounds,
    select,
)
from safegap.steer.anchors import Anchor, CorruptionKind, corrupted_image, validate_anchors
from safegap.steer.intervene import DEFAULT_POLICY
from safegap.steer.sample import generate_sample_level
from safegap.steer.vector import FORMS, ShiftVector, Tuning

DEFAULT_ALPHAS: tuple[float, ...] = tuple(round(0.1 * k, 1) for k in range(16))  # 0.0 .. 1.5
#: Image conditions tuning can evaluate its prompts under (``image``: their own images).
TUNE_CONDITIONS: tuple[str, ...] = ("image", "blank_image", "noise_image", "text")
DEFAULT_CONDITIONS: tuple[str, ...] = ("image",)
NOT_CHECKED = "not checked: no capability set was given (Tune(capability=...), --tune-capability)"

__all__ = [
    "DEFAULT_ALPHAS",
    "DEFAULT_CONDITIONS",
    "MAX_CAPABILITY_LOSS",
    "MAX_OVER_REFUSAL_RISE",
    "RULE",
    "TUNE_CONDITIONS",
    "CapabilityCheck",
    "CapabilityItem",
    "SweepPoint",
    "Tune",
    "alpha_sweep",
    "check_conditions",
    "select_alpha",
    "tune",
]


@dataclass(frozen=True)
class CapabilityItem:
    """One capability question: the prompt, its image, the benchmark condition it belongs to and
    ``score(reply)`` (1/0, or a fraction for VQA accuracy)."""

    text: str
    image: Image.Image | None
    condition: str
    score: Callable[[str], float]


@dataclass(frozen=True)
class CapabilityCheck:
    """A capability anchor set for tuning: ``items`` scored by ``metric`` (the benchmark ``id``'s
    scorer); capability at an alpha is the worst condition's mean score."""

    id: str
    metric: str
    items: Sequence[CapabilityItem]
    chance: float | None = None

    def __post_init__(self) -> None:
        if not self.items:
            raise ValueError(f"capability set {self.id!r} has no items to score")


def check_conditions(conditions: Sequence[str]) -> tuple[str, ...]:
    """``conditions`` deduplicated, each one of :data:`TUNE_CONDITIONS` (one-line error)."""
    out = tuple(dict.fromkeys(c.strip() for c in conditions if c.strip()))
    bad = [c for c in out if c not in TUNE_CONDITIONS]
    if bad or not out:
        raise ValueError(f"tuning conditions {list(conditions)}: choose from {', '.join(TUNE_CONDITIONS)}")
    return out


def _under(items: Sequence[Anchor], condition: str) -> list[Anchor]:
    """The prompts as asked under ``condition`` (corrupted images as CMRM draws them)."""
    if condition == "image":
        return list(items)
    if condition == "text":
        return [(t, None) for t, _ in items]
    kind: CorruptionKind = "blank" if condition == "blank_image" else "noise"
    return [(t, corrupted_image(kind, img, t)) for t, img in items]


@dataclass(frozen=True)
class SweepPoint:
    """One alpha: ``unsafe_rate`` and ``over_refusal_rate`` in their worst (highest) image
    condition, ``capability`` in its worst (lowest) one (``None``: not measured);
    ``by_condition`` holds every condition's numbers."""

    alpha: float
    unsafe_rate: float
    over_refusal_rate: float
    n_harmful: int
    n_benign: int
    judge: str
    capability: float | None = None
    capability_metric: str | None = None
    n_capability: int = 0
    by_condition: dict[str, dict[str, float]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def worst(self, key: str, highest: bool) -> str:
        """The condition where ``key`` is worst (``""`` when not broken down)."""
        cells = [(c, v[key]) for c, v in self.by_condition.items() if key in v]
        if not cells:
            return ""
        return (max if highest else min)(cells, key=lambda cv: cv[1])[0]

    def point(self, form: str) -> Point:
        """This alpha as a frontier :class:`~safegap.selection.Point` of family ``form``
        (alpha 0 is the baseline, ``none``)."""

        def est(value: float, key: str, highest: bool) -> Estimate:
            return Estimate(value, value, value, self.worst(key, highest))

        return Point(
            defense=BASELINE if self.alpha == 0.0 else f"{form}:alpha={self.alpha:g}",
            family=BASELINE if self.alpha == 0.0 else form,
            alpha=self.alpha,
            harmful_refusal=est(1.0 - self.unsafe_rate, "unsafe_rate", True),
            over_refusal=est(self.over_refusal_rate, "over_refusal_rate", True),
            capability=None if self.capability is None else est(self.capability, "capability", False),
            capability_metric=self.capability_metric,
        )


def _replies(
    vlm: VLM,
    shift: ShiftVector | Literal["sample"],
    items: list[Anchor],
    alpha: float,
    max_new_tokens: int,
    system: str | None,
    batch_size: int,
    options: dict[str, Any],
) -> list[str]:
    texts = [t for t, _ in items]
    images = [img for _, img in items]
    if isinstance(shift, str):
        return generate_sample_level(
            vlm,
            texts,
            images,
            alpha=alpha,
            max_new_tokens=max_new_tokens,
            system=system,
            batch_size=batch_size,
            **options,
        )
    with shift.apply(vlm, alpha=alpha, **options):
        return generate(
            vlm, texts, images, max_new_tokens=max_new_tokens, system=system, batch_size=batch_size
        )


def _verdicts(judge: Judge, items: list[Anchor], replies: list[str], harmful: bool) -> list[bool]:
    """Per reply: unsafe (``harmful`` prompts; a judge without an unsafe verdict: not refused) or
    refused (benign prompts), as ``judge`` says."""
    inputs = [
        JudgeInput(prompt=text, reply=reply, image=image, harmful=harmful)
        for (text, image), reply in zip(items, replies, strict=True)
    ]
    out = []
    for verdict in judge.judge(inputs):
        if harmful and verdict.unsafe is not None:
            out.append(bool(verdict.unsafe))
        elif verdict.refusal is None:
            raise ValueError(
                f"judge {judge.id} gave no refusal verdict; tuning needs one that does (refusal)"
            )
        else:
            out.append(not verdict.refusal if harmful else bool(verdict.refusal))
    return out


def _capability(
    vlm: VLM,
    shift: ShiftVector | Literal["sample"],
    check: CapabilityCheck,
    run: tuple[float, int, str | None, int, dict[str, Any]],
) -> dict[str, float]:
    """Mean score per condition of ``check``'s items. An empty reply scores 0: a steered model
    that answers nothing has lost the answer."""
    out: dict[str, float] = {}
    for condition in dict.fromkeys(item.condition for item in check.items):
        mine = [item for item in check.items if item.condition == condition]
        replies = _replies(vlm, shift, [(i.text, i.image) for i in mine], *run)
        values = [item.score(r) if r.strip() else 0.0 for item, r in zip(mine, replies, strict=True)]
        out[condition] = sum(values) / len(values)
    return out


def alpha_sweep(
    vlm: VLM,
    shift: ShiftVector | Literal["sample"],
    harmful: Sequence[Anchor] | Sequence[str],
    benign: Sequence[Anchor] | Sequence[str],
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    *,
    judge: Judge,
    max_new_tokens: int = 32,
    system: str | None = None,
    batch_size: int = 8,
    conditions: Sequence[str] = DEFAULT_CONDITIONS,
    capability: CapabilityCheck | None = None,
    **options: Any,
) -> list[SweepPoint]:
    """One :class:`SweepPoint` per alpha, the prompts asked under each of ``conditions``
    (:data:`TUNE_CONDITIONS`) and ``capability``'s items under their own. ``shift="sample"``
    sweeps sample-level CMRM; other keyword options go to ``shift.apply`` (policy, layers, edit,
    form, ...) or to :func:`safegap.steer.sample.generate_sample_level` (corrupt, ...)."""
    if isinstance(shift, str) and shift != "sample":
        raise ValueError(f"shift must be a ShiftVector or 'sample', got {shift!r}")
    bad = validate_anchors(harmful)
    good = validate_anchors(benign)
    conditions = check_conditions(conditions)
    points = []
    for alpha in alphas:
        run = (alpha, max_new_tokens, system, batch_size, options)
        cells: dict[str, dict[str, float]] = {}
        for condition in conditions:
            ask_bad, ask_good = _under(bad, condition), _under(good, condition)
            unsafe = _verdicts(judge, ask_bad, _replies(vlm, shift, ask_bad, *run), harmful=True)
            refused = _verdicts(judge, ask_good, _replies(vlm, shift, ask_good, *run), harmful=False)
            cells[condition] = {
                "unsafe_rate": sum(unsafe) / len(bad),
                "over_refusal_rate": sum(refused) / len(good),
            }
        caps = _capability(vlm, shift, capability, run) if capability is not None else {}
        for condition, value in caps.items():
            cells.setdefault(f"capability:{condition}", {})["capability"] = value
        points.append(
            SweepPoint(
                alpha=float(alpha),
                unsafe_rate=max(c["unsafe_rate"] for c in cells.values() if "unsafe_rate" in c),
                over_refusal_rate=max(
                    c["over_refusal_rate"] for c in cells.values() if "over_refusal_rate" in c
                ),
                n_harmful=len(bad),
                n_benign=len(good),
                judge=judge.id,
                capability=min(caps.values()) if caps else None,
                capability_metric=capability.metric if capability is not None else None,
                n_capability=len(capability.items) if capability is not None else 0,
                by_condition=cells,
            )
        )
    return points


def _choose(
    sweeps: dict[str, list[SweepPoint]], max_over_refusal_rise: float, max_capability_loss: float
) -> tuple[str, SweepPoint, Selection]:
    """The form and sweep point :func:`safegap.selection.select` picks over every form's points
    (alpha 0, the same unsteered model in every form, is the baseline, taken from the first
    form); ties go to the earlier form."""
    check_bounds(max_capability_loss, max_over_refusal_rise)
    order = list(sweeps)
    base = [p for p in sweeps[order[0]] if p.alpha == 0.0]
    if not base:
        raise ValueError("choosing alpha needs the unsteered point (alpha 0) in the sweep")
    found: dict[str, tuple[str, SweepPoint]] = {BASELINE: (order[0], base[0])}
    points = [base[0].point(order[0])]
    for form in order:
        for p in sweeps[form]:
            if p.alpha != 0.0:
                found[(pt := p.point(form)).defense] = (form, p)
                points.append(pt)
    selection = select(points, max_capability_loss, max_over_refusal_rise)
    form, chosen = found[selection.chosen.defense]
    return form, chosen, selection


def select_alpha(
    points: Sequence[SweepPoint],
    max_over_refusal_rise: float = MAX_OVER_REFUSAL_RISE,
    max_capability_loss: float = MAX_CAPABILITY_LOSS,
) -> SweepPoint:
    """The sweep point the frontier's rule picks (:func:`safegap.selection.select`): the largest
    drop in unsafe rate from the unsteered point (``alpha == 0``, which the sweep must contain)
    among those whose worst-condition over-refusal exceeds the unsteered one's by at most
    ``max_over_refusal_rise`` and, where capability was measured, whose capability is at most
    ``max_capability_loss`` below it; ties go to the smaller capability loss, then the smaller
    alpha (the gentler edit).

    This is how CMRM's alpha is meant to be chosen: on a labelled calibration split, never on
    the prompts it is evaluated on (the paper tuned alpha per model and dataset; a fixed alpha
    that suits one model refuses everything, or nothing, on another).
    """
    return _choose({"full": list(points)}, max_over_refusal_rise, max_capability_loss)[1]


@dataclass(frozen=True)
class Tune:
    """What to tune a shift on and how: labelled ``harmful`` and ``benign`` prompts with images
    (anchors or an anchor spec string), the ``judge`` (``None``: the caller's default, the
    refusal-phrase judge in :func:`safegap.calibrate`), the alphas and forms swept, the image
    ``conditions`` the prompts are asked under (worst one counts), an optional ``capability``
    set (a :class:`CapabilityCheck` or a capability benchmark spec such as ``organism_vqa:n=1``,
    at most ``capability_limit`` of its samples) and the rule's bounds (defaults: the frontier's
    :data:`~safegap.selection.MAX_CAPABILITY_LOSS` and
    :data:`~safegap.selection.MAX_OVER_REFUSAL_RISE`). ``harmful`` and ``benign`` must differ."""

    harmful: Sequence[Anchor] | str
    benign: Sequence[Anchor] | str
    judge: Judge | None = None
    alphas: Sequence[float] = DEFAULT_ALPHAS
    forms: Sequence[str] = FORMS
    max_over_refusal_rise: float = MAX_OVER_REFUSAL_RISE
    policy: str = DEFAULT_POLICY
    max_new_tokens: int = 16
    batch_size: int = 8
    capability: CapabilityCheck | str | None = None
    capability_limit: int | None = None
    max_capability_loss: float = MAX_CAPABILITY_LOSS
    conditions: Sequence[str] = DEFAULT_CONDITIONS


def tune(
    vlm: VLM,
    shift: ShiftVector | Literal["sample"],
    harmful: Sequence[Anchor],
    benign: Sequence[Anchor],
    *,
    judge: Judge,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    forms: Sequence[str] = FORMS,
    max_over_refusal_rise: float = MAX_OVER_REFUSAL_RISE,
    max_capability_loss: float = MAX_CAPABILITY_LOSS,
    capability: CapabilityCheck | None = None,
    conditions: Sequence[str] = DEFAULT_CONDITIONS,
    policy: str = DEFAULT_POLICY,
    max_new_tokens: int = 16,
    batch_size: int = 8,
    corrupt: CorruptionKind = "blank",
    sources: dict[str, str] | None = None,
) -> Tuning:
    """Sweep alpha (for a vector: in each of ``forms``) on ``harmful`` and ``benign`` prompts
    under each of ``conditions`` (and on ``capability``'s items) and pick by the frontier's rule
    (:func:`select_alpha`'s, over every form at once); ties between forms go to the earlier one.
    Alpha 0 (unsteered, the same in every form) is generated once.

    ``shift="sample"`` tunes sample-level CMRM (one form, ``full``; ``corrupt`` is its meaningless
    image). ``sources`` (e.g. the anchor specs) are recorded in ``chosen_by``, which states the
    rule, the bounds, the conditions, the capability set (or that capability was not checked)
    and the chosen point.
    """
    check_bounds(max_capability_loss, max_over_refusal_rise)
    conditions = check_conditions(conditions)
    unknown = sorted(set(forms) - set(FORMS))
    if unknown or not forms:
        raise ValueError(f"forms {list(forms)}: choose from {', '.join(FORMS)}")
    steered = [a for a in dict.fromkeys(float(a) for a in alphas) if a != 0.0]
    sweeps: dict[str, list[SweepPoint]] = {}
    extra: dict[str, Any] = {"corrupt": corrupt} if isinstance(shift, str) else {}
    common: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "policy": policy,
        "judge": judge,
        "conditions": conditions,
        "capability": capability,
    }
    unsteered: SweepPoint | None = None
    for form in ["full"] if isinstance(shift, str) else forms:
        if not isinstance(shift, str):
            extra = {"form": form}
        if unsteered is None:
            unsteered = alpha_sweep(vlm, shift, harmful, benign, [0.0], **common, **extra)[0]
        sweeps[form] = [unsteered, *alpha_sweep(vlm, shift, harmful, benign, steered, **common, **extra)]
    form, chosen, selection = _choose(sweeps, max_over_refusal_rise, max_capability_loss)
    chosen_by = {
        "rule": RULE,
        "max_capability_loss": max_capability_loss,
        "max_over_refusal_rise": max_over_refusal_rise,
        "conditions": list(conditions),
        "capability": (
            {
                "benchmark": capability.id,
                "metric": capability.metric,
                "n": len(capability.items),
                "conditions": list(dict.fromkeys(i.condition for i in capability.items)),
                "chance": capability.chance,
            }
            if capability is not None
            else NOT_CHECKED
        ),
        "chosen": {**chosen.as_dict(), "form": form},
        "selection": {**selection.as_dict(), "form": form},
        "sweeps": {f: [p.as_dict() for p in points] for f, points in sweeps.items()},
        **(sources or {}),
    }
    return Tuning(chosen.alpha, form, policy, "all", chosen_by)  # type: ignore[arg-type]
