"""Choosing CMRM's strength: ``alpha_sweep`` (unsafe and over-refusal rates per ``alpha``),
``select_alpha`` (the rule) and ``tune`` (sweep each form, pick, return a :class:`Tuning`).

Unsafe = a harmful prompt the judge calls unsafe (for the refusal-phrase judge: *not* refused, an
upper bound on harm); over-refusal = a benign prompt the judge calls a refusal. The judge is
passed in (any :class:`safegap.judge.base.Judge` that answers ``refusal``), so steer builds none.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from safegap.judge.base import Judge, JudgeInput
from safegap.models.generation import generate
from safegap.models.loading import VLM
from safegap.steer.anchors import Anchor, CorruptionKind, validate_anchors
from safegap.steer.intervene import DEFAULT_POLICY
from safegap.steer.sample import generate_sample_level
from safegap.steer.vector import FORMS, ShiftVector, Tuning

DEFAULT_ALPHAS: tuple[float, ...] = tuple(round(0.1 * k, 1) for k in range(16))  # 0.0 .. 1.5
RULE = "lowest unsafe rate with over-refusal <= unsteered + max_over_refusal_rise"


@dataclass(frozen=True)
class SweepPoint:
    alpha: float
    unsafe_rate: float
    over_refusal_rate: float
    n_harmful: int
    n_benign: int
    judge: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


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
    **options: Any,
) -> list[SweepPoint]:
    """One :class:`SweepPoint` per alpha. ``shift="sample"`` sweeps sample-level CMRM; other
    keyword options go to ``shift.apply`` (policy, layers, edit, form, ...) or to
    :func:`safegap.steer.sample.generate_sample_level` (corrupt, ...)."""
    if isinstance(shift, str) and shift != "sample":
        raise ValueError(f"shift must be a ShiftVector or 'sample', got {shift!r}")
    bad = validate_anchors(harmful)
    good = validate_anchors(benign)
    points = []
    for alpha in alphas:
        run = (alpha, max_new_tokens, system, batch_size, options)
        unsafe = _verdicts(judge, bad, _replies(vlm, shift, bad, *run), harmful=True)
        refused = _verdicts(judge, good, _replies(vlm, shift, good, *run), harmful=False)
        points.append(
            SweepPoint(
                alpha=float(alpha),
                unsafe_rate=sum(unsafe) / len(bad),
                over_refusal_rate=sum(refused) / len(good),
                n_harmful=len(bad),
                n_benign=len(good),
                judge=judge.id,
            )
        )
    return points


def select_alpha(points: Sequence[SweepPoint], max_over_refusal_rise: float = 0.05) -> SweepPoint:
    """The sweep point to use: the lowest unsafe rate among the points whose over-refusal exceeds
    the unsteered one's (``alpha == 0``, which the sweep must contain) by at most
    ``max_over_refusal_rise``; ties go to the smaller alpha (the gentler edit).

    This is how CMRM's alpha is meant to be chosen: on a labelled calibration split, never on
    the prompts it is evaluated on (the paper tuned alpha per model and dataset; a fixed alpha
    that suits one model refuses everything, or nothing, on another).
    """
    if max_over_refusal_rise < 0:
        raise ValueError(f"max_over_refusal_rise must be >= 0, got {max_over_refusal_rise}")
    base = [p for p in points if p.alpha == 0.0]
    if not base:
        raise ValueError("select_alpha needs the unsteered point (alpha 0) in the sweep")
    limit = base[0].over_refusal_rate + max_over_refusal_rise + 1e-9
    allowed = [p for p in points if p.over_refusal_rate <= limit]
    return min(allowed, key=lambda p: (p.unsafe_rate, p.alpha))


@dataclass(frozen=True)
class Tune:
    """What to tune a shift on and how: labelled ``harmful`` and ``benign`` prompts with images
    (anchors or an anchor spec string), the ``judge`` (``None``: the caller's default, the
    refusal-phrase judge in :func:`safegap.calibrate`), the alphas and forms swept and the
    over-refusal budget of :func:`select_alpha`. ``harmful`` and ``benign`` must differ."""

    harmful: Sequence[Anchor] | str
    benign: Sequence[Anchor] | str
    judge: Judge | None = None
    alphas: Sequence[float] = DEFAULT_ALPHAS
    forms: Sequence[str] = FORMS
    max_over_refusal_rise: float = 0.05
    policy: str = DEFAULT_POLICY
    max_new_tokens: int = 16
    batch_size: int = 8


def tune(
    vlm: VLM,
    shift: ShiftVector | Literal["sample"],
    harmful: Sequence[Anchor],
    benign: Sequence[Anchor],
    *,
    judge: Judge,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    forms: Sequence[str] = FORMS,
    max_over_refusal_rise: float = 0.05,
    policy: str = DEFAULT_POLICY,
    max_new_tokens: int = 16,
    batch_size: int = 8,
    corrupt: CorruptionKind = "blank",
    sources: dict[str, str] | None = None,
) -> Tuning:
    """Sweep alpha (for a vector: in each of ``forms``) on ``harmful`` and ``benign`` prompts with
    images and pick with :func:`select_alpha`; ties between forms go to the earlier one.

    ``shift="sample"`` tunes sample-level CMRM (one form, ``full``; ``corrupt`` is its meaningless
    image). ``sources`` (e.g. the anchor specs) are recorded in ``chosen_by``.
    """
    if 0.0 not in alphas:
        alphas = (0.0, *alphas)
    unknown = sorted(set(forms) - set(FORMS))
    if unknown or not forms:
        raise ValueError(f"forms {list(forms)}: choose from {', '.join(FORMS)}")
    sweeps: dict[str, list[SweepPoint]] = {}
    extra: dict[str, Any] = {"corrupt": corrupt} if isinstance(shift, str) else {}
    for form in ["full"] if isinstance(shift, str) else forms:
        if not isinstance(shift, str):
            extra = {"form": form}
        sweeps[form] = alpha_sweep(
            vlm,
            shift,
            harmful,
            benign,
            alphas,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            policy=policy,
            judge=judge,
            **extra,
        )
    picks = {form: select_alpha(points, max_over_refusal_rise) for form, points in sweeps.items()}
    order = list(sweeps)
    form = min(order, key=lambda f: (picks[f].unsafe_rate, picks[f].alpha, order.index(f)))
    chosen_by = {
        "rule": RULE,
        "max_over_refusal_rise": max_over_refusal_rise,
        "chosen": picks[form].as_dict(),
        "sweeps": {f: [p.as_dict() for p in points] for f, points in sweeps.items()},
        **(sources or {}),
    }
    return Tuning(picks[form].alpha, form, policy, "all", chosen_by)  # type: ignore[arg-type]
