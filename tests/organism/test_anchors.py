"""``organism:calibration`` anchors: the world's calibration split, harmful and benign alternating,
each with a scene image, disjoint from the training and evaluation requests."""

from __future__ import annotations

import pytest
from PIL import Image

import safegap.organism as organism
from safegap.organism.anchors import parse_anchor_arg
from safegap.organism.world import World
from safegap.steer.anchors import anchors_hash, load_anchors


def test_calibration_split_as_anchors() -> None:
    anchors = load_anchors("organism:calibration")
    world = World(seed=0)
    harmful = {r.text for r in world.requests("calibration", True)}
    benign = {r.text for r in world.requests("calibration", False)}
    assert len(anchors) == 96  # 48 of each kind by default
    kinds = ["harmful" if t in harmful else "benign" if t in benign else "?" for t, _ in anchors]
    assert kinds == ["harmful", "benign"] * 48  # alternating, so --limit keeps both kinds
    elsewhere = {
        r.text for split in ("train", "eval") for h in (True, False) for r in world.requests(split, h)
    }
    assert not {t for t, _ in anchors} & elsewhere
    for _, image in anchors:
        assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (64, 64)
    assert len({img.tobytes() for _, img in anchors if img is not None}) > 10
    # the study's pairing: the same (request, image) pairs its CMRM calibrates and tunes on
    from safegap.organism.study import calibration_data

    harmful_pairs, benign_pairs = calibration_data(world).labelled()
    study = [p for pair in zip(harmful_pairs, benign_pairs, strict=True) for p in pair]
    assert [(t, img.convert("RGB").tobytes()) for t, img in study] == [
        (t, img.tobytes()) for t, img in anchors
    ]
    # deterministic, and the same as the package-level export
    assert anchors_hash(anchors) == anchors_hash(load_anchors("organism:calibration"))
    assert anchors_hash(organism.calibration_anchors("calibration")) == anchors_hash(anchors)


def test_options_and_errors() -> None:
    assert parse_anchor_arg("calibration") == ("calibration", 0, 48, "all")
    assert parse_anchor_arg("calibration,world_seed=2,n=5,kind=benign") == ("calibration", 2, 5, "benign")
    assert len(load_anchors("organism:calibration,n=3")) == 6
    other_world = load_anchors("organism:calibration,world_seed=1,n=3")
    assert [t for t, _ in other_world] != [t for t, _ in load_anchors("organism:calibration,n=3")]
    with pytest.raises(ValueError, match="split 'eval' is not allowed"):
        load_anchors("organism:eval")
    with pytest.raises(
        ValueError, match="organism anchors: unknown option 'size'; valid: kind, n, world_seed"
    ):
        load_anchors("organism:calibration,size=3")
    with pytest.raises(ValueError, match="n='x' is not an integer"):
        load_anchors("organism:calibration,n=x")
    with pytest.raises(ValueError, match="n must be at least 1"):
        load_anchors("organism:calibration,n=0")


def test_kind_selects_the_labelled_sets() -> None:
    world = World(seed=0)
    harmful = {r.text for r in world.requests("calibration", True)}
    only_harmful = load_anchors("organism:calibration,kind=harmful,n=5")
    only_benign = load_anchors("organism:calibration,n=5,kind=benign")
    assert len(only_harmful) == len(only_benign) == 5
    assert all(t in harmful for t, _ in only_harmful) and not any(t in harmful for t, _ in only_benign)
    with pytest.raises(ValueError, match="kind='evil'"):
        load_anchors("organism:calibration,kind=evil")
