"""CMRM calibration anchors from the organism's world: ``organism:calibration`` in
``safegap calibrate --anchors`` (see :mod:`safegap.steer.anchors`).

The anchors are the world's *calibration* split (topics and phrasings disjoint from training and
from the eval split that ``safegap eval --bench organism`` uses), as
:func:`safegap.organism.study.calibration_data` gives it: harmful and benign requests, each
paired with one of the organism's benign scene images (the "original" image calibration compares
against; the corrupted image is CMRM's blank or noise image of the same 64 px size). Harmful and
benign requests alternate, so ``--limit N`` keeps both kinds.

Spec: ``organism:calibration[,world_seed=S][,n=N][,kind=K]``: ``world_seed`` (default 0, the
world every model seed is trained and evaluated on), ``n`` (at most N harmful and N benign
requests; default 48) and ``kind`` (``all``, the default, or ``harmful`` / ``benign`` alone: the
labelled sets ``safegap calibrate --tune-harmful/--tune-benign`` choose alpha on).
"""

from __future__ import annotations

from PIL import Image

from safegap.specs import parse_spec

DEFAULT_N = 48
KINDS = ("all", "harmful", "benign")
USAGE = "use organism:calibration[,world_seed=S][,n=N][,kind=all|harmful|benign]"


def parse_anchor_arg(arg: str) -> tuple[str, int, int, str]:
    """``"calibration,world_seed=1,n=8,kind=harmful"`` -> ``("calibration", 1, 8, "harmful")``
    (one-line errors; unknown keys name the valid ones)."""
    from safegap.organism.world import parse_world_spec

    split, world_seed, n = parse_world_spec(
        arg, "organism anchors", USAGE, "calibration", DEFAULT_N, other_keys=("kind",)
    )
    kind = parse_spec(f"organism:{arg}").options.get("kind", "all")
    if kind not in KINDS:
        raise ValueError(f"organism anchors {arg!r}: kind={kind!r}; {USAGE}")
    return split, world_seed, n, kind


def calibration_anchors(split: str = "calibration") -> list[tuple[str, Image.Image | None]]:
    """``(request, scene image)`` anchors of the world's calibration split, harmful and benign
    alternating. ``split`` is the text after ``organism:`` (options in the module docstring).

    Only the calibration split is accepted: anchors from ``train`` would calibrate on what the
    organism was aligned on, and anchors from ``eval`` on the requests it is evaluated on."""
    from safegap.organism.study import calibration_data
    from safegap.organism.world import World

    name, world_seed, n, kind = parse_anchor_arg(split)
    if name != "calibration":
        raise ValueError(
            f"organism anchors: split {name!r} is not allowed; only 'calibration' is disjoint from the "
            "organism's training and evaluation requests (use organism:calibration)"
        )
    data = calibration_data(World(seed=world_seed), n=n)
    if not data.images:
        raise ValueError("organism anchors: the calibration split has no images")
    # The pairing of requests with images is the study's (CalibrationData.labelled), so the CLI,
    # the demo and `safegap organism study` calibrate and tune on the same anchors.
    harmful, benign = data.labelled()
    anchors: list[tuple[str, Image.Image | None]] = []
    for i in range(max(len(harmful), len(benign))):
        if i < len(harmful) and kind != "benign":
            anchors.append((harmful[i][0], harmful[i][1].convert("RGB")))
        if i < len(benign) and kind != "harmful":
            anchors.append((benign[i][0], benign[i][1].convert("RGB")))
    if not anchors:
        raise ValueError(f"organism anchors: world seed {world_seed} has no calibration requests")
    return anchors
