"""CMRM steering: calibrate a per-layer shift, tune it, save it, apply it with hooks (extract,
aggregate and apply are separate steps). See ``docs/cmrm.md`` for the design decisions.

One way to attach: ``with shift.apply(vlm): ...`` (or ``handle = shift.apply(vlm)`` and
``handle.remove()``); the shift's :class:`Tuning` is honoured unless arguments override it.
Three names for three kinds of position: calibration's ``read_at`` (where states are read),
steering's ``policy`` (which positions are changed) and :func:`safegap.probe.record`'s
``positions`` (which tokens are recorded).

steer imports nothing from evaluation or the organism: the ``cmrm`` and ``cmrm_sample``
evaluation defenses live in :mod:`safegap.eval.cmrm`, and tuning takes the judge as an argument.
"""

from safegap.steer.anchors import Anchor, anchors_hash, corrupted_image, load_anchors, register_anchor_source
from safegap.steer.calibrate import GapClosure, calibrate, calibrate_direction, gap_closure, read_states
from safegap.steer.intervene import DEFAULT_POLICY, POSITION_POLICIES, Edit, SteeringHandle
from safegap.steer.operators import OPERATORS, add, gate, gated, project
from safegap.steer.sample import generate_sample_level, sample_level_ids, sample_shifts
from safegap.steer.sweep import SweepPoint, Tune, alpha_sweep, select_alpha, tune
from safegap.steer.vector import Provenance, ShiftVector, Tuning

__all__ = [
    "DEFAULT_POLICY",
    "OPERATORS",
    "POSITION_POLICIES",
    "Anchor",
    "Edit",
    "GapClosure",
    "Provenance",
    "ShiftVector",
    "SteeringHandle",
    "SweepPoint",
    "Tune",
    "Tuning",
    "alpha_sweep",
    "anchors_hash",
    "calibrate",
    "calibrate_direction",
    "corrupted_image",
    "gap_closure",
    "gate",
    "gated",
    "generate_sample_level",
    "load_anchors",
    "project",
    "read_states",
    "register_anchor_source",
    "sample_level_ids",
    "sample_shifts",
    "select_alpha",
    "add",
    "tune",
]
