"""CMRM as evaluation defenses.

* ``cmrm:PATH[,alpha=A,positions=P,layers=L,form=full|increments]`` -- dataset-level, from a saved
  shift; ``form=increments`` applies :meth:`ShiftVector.increments`.
* ``cmrm_sample[:corrupt=blank|noise,alpha=A,positions=P,layers=L]`` -- sample-level.

Registration: ``safegap.eval.defenses`` imports this module on its last line, so the names are
in ``DEFENSES`` whenever the registry is; this module imports the registry, never the reverse
at import time of ``safegap.steer`` (which stays free of evaluation code).

``layers`` is ``all``, one index ``N`` or an inclusive range ``A-B``. For the organism study,
:func:`cmrm_from_anchors` and :func:`cmrm_sample_defense` build defenses from a VLM and
calibration anchors in one call.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from safegap.eval.defenses import DEFENSES, Defense, DefenseSpec
from safegap.models.adapter import ImagesArg
from safegap.models.generation import generate
from safegap.models.loading import VLM
from safegap.steer.anchors import Anchor
from safegap.steer.calibrate import calibrate
from safegap.steer.intervene import DEFAULT_POSITIONS, Layers, resolve_policy
from safegap.steer.sample import generate_sample_level
from safegap.steer.vector import ShiftVector


def parse_layers(text: str) -> Layers:
    """``all``, ``N`` (negative counts from the end) or ``A-B`` (inclusive)."""
    text = text.strip()
    if text == "all":
        return "all"
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    match = re.fullmatch(r"(\d+)-(\d+)", text)
    if match and int(match[1]) <= int(match[2]):
        return list(range(int(match[1]), int(match[2]) + 1))
    raise ValueError(f"layers={text!r}: use all, N or A-B")


def _alpha(options: dict[str, str], spec: DefenseSpec) -> float:
    try:
        return float(options.get("alpha", "1.0"))
    except ValueError:
        raise ValueError(f"defense {spec}: alpha={options['alpha']!r} is not a number") from None


def _check_options(spec: DefenseSpec, allowed: set[str]) -> None:
    unknown = sorted(set(spec.options) - allowed)
    if unknown:
        raise ValueError(
            f"defense {spec}: unknown option(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
        )


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


def make_cmrm(spec: DefenseSpec, vlm: VLM) -> Defense:
    if not spec.arg:
        raise ValueError(f"defense {spec}: give the shift file, e.g. cmrm:shift.safetensors,alpha=1.0")
    _check_options(spec, {"alpha", "positions", "layers", "form"})
    positions = spec.options.get("positions", DEFAULT_POSITIONS)
    resolve_policy(positions)
    form = spec.options.get("form", "full")
    if form not in ("full", "increments"):
        raise ValueError(f"defense {spec}: form={form!r}; use full or increments")
    shift = ShiftVector.load(spec.arg, vlm=vlm)
    if form == "increments":
        shift = shift.increments()
    layers = parse_layers(spec.options.get("layers", "all"))
    return CMRMDefense(shift, _alpha(spec.options, spec), positions, layers, id=str(spec))


def make_cmrm_sample(spec: DefenseSpec, vlm: VLM) -> Defense:
    if spec.arg:
        raise ValueError(
            f"defense {spec}: cmrm_sample takes only options (corrupt=, alpha=, positions=, layers=)"
        )
    _check_options(spec, {"alpha", "positions", "layers", "corrupt"})
    corrupt = spec.options.get("corrupt", "blank")
    if corrupt not in ("blank", "noise"):
        raise ValueError(f"defense {spec}: corrupt={corrupt!r}; use blank or noise")
    positions = spec.options.get("positions", DEFAULT_POSITIONS)
    resolve_policy(positions)
    layers = parse_layers(spec.options.get("layers", "all"))
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


DEFENSES["cmrm"] = make_cmrm
DEFENSES["cmrm_sample"] = make_cmrm_sample
