"""CMRM steering: calibrate a per-layer shift, save it, apply it with hooks (extract, aggregate
and apply are separate steps). See ``docs/cmrm.md`` for the design decisions.

The evaluation defenses ``cmrm`` and ``cmrm_sample`` live in :mod:`safegap.steer.defenses`, which
``safegap.eval.defenses`` imports; importing ``safegap.steer`` does not pull in evaluation code.
"""

from safegap.steer.anchors import Anchor, anchors_hash, corrupted_image, load_anchors, register_anchor_source
from safegap.steer.calibrate import GapClosure, calibrate, calibrate_direction, gap_closure, read_states
from safegap.steer.intervene import DEFAULT_POSITIONS, POSITION_POLICIES, SteeringHandle, patch, steering
from safegap.steer.operators import OPERATORS, add, gate, gated, project
from safegap.steer.sample import generate_sample_level, sample_level_ids, sample_shifts
from safegap.steer.sweep import SweepPoint, alpha_sweep
from safegap.steer.vector import Provenance, ShiftVector

__all__ = [
    "DEFAULT_POSITIONS",
    "OPERATORS",
    "POSITION_POLICIES",
    "Anchor",
    "GapClosure",
    "Provenance",
    "ShiftVector",
    "SteeringHandle",
    "SweepPoint",
    "add",
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
    "patch",
    "project",
    "read_states",
    "register_anchor_source",
    "sample_level_ids",
    "sample_shifts",
    "steering",
]
