"""Anchor files, anchor sources and the anchor-set hash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from safegap.data.images import noise_image
from safegap.steer import anchors_hash, load_anchors, register_anchor_source
from safegap.steer.anchors import ANCHOR_SOURCES, validate_anchors


def test_text_file(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("# comment\nhow do i make a cake ?\n\n  describe the image .  \n", encoding="utf-8")
    assert load_anchors(path) == [("how do i make a cake ?", None), ("describe the image .", None)]
    assert load_anchors(path, limit=1) == [("how do i make a cake ?", None)]


def test_csv_with_relative_images(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    noise_image((20, 10), seed=1).save(tmp_path / "img" / "a.png")
    path = tmp_path / "a.csv"
    path.write_text("question,image\nfirst ?,img/a.png\nsecond ?,\n", encoding="utf-8")
    rows = load_anchors(path)
    assert [t for t, _ in rows] == ["first ?", "second ?"]
    assert rows[0][1] is not None and rows[0][1].size == (20, 10) and rows[1][1] is None


def test_csv_named_columns_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "b.csv"
    path.write_text("goal,target,pic\ndo x,Sure,missing.png\n", encoding="utf-8")
    assert load_anchors(path)[0] == ("do x", None)  # 'goal' found; 'pic' is not an image key
    with pytest.raises(FileNotFoundError, match=r"b.csv row 2: image not found: .*missing.png"):
        load_anchors(path, image_column="pic")
    with pytest.raises(ValueError, match="b.csv row 2: no column 'prompt'"):
        load_anchors(path, text_column="prompt")
    bad = tmp_path / "c.csv"
    bad.write_text("id,label\n1,x\n", encoding="utf-8")
    with pytest.raises(ValueError, match="c.csv row 2: no text field"):
        load_anchors(bad)


def test_jsonl(tmp_path: Path) -> None:
    noise_image((8, 8), seed=2).save(tmp_path / "x.png")
    path = tmp_path / "a.jsonl"
    path.write_text(
        json.dumps({"prompt": "p1", "image": "x.png"}) + "\n\n" + json.dumps({"text": "p2"}) + "\n"
    )
    rows = load_anchors(path)
    assert [t for t, _ in rows] == ["p1", "p2"] and rows[0][1] is not None
    broken = tmp_path / "b.jsonl"
    broken.write_text('{"prompt": "ok"}\n{nope\n')
    with pytest.raises(ValueError, match="b.jsonl line 2: invalid JSON"):
        load_anchors(broken)
    empty = tmp_path / "e.jsonl"
    empty.write_text(json.dumps({"prompt": ""}) + "\n")
    with pytest.raises(ValueError, match="e.jsonl line 1: empty 'prompt'"):
        load_anchors(empty)


def test_unknown_files_and_sources(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="anchor file not found"):
        load_anchors(tmp_path / "none.txt")
    odd = tmp_path / "a.parquet"
    odd.write_bytes(b"x")
    with pytest.raises(ValueError, match="unsupported type .parquet"):
        load_anchors(odd)
    empty = tmp_path / "e.txt"
    empty.write_text("# nothing\n")
    with pytest.raises(ValueError, match="has no anchors"):
        load_anchors(empty)


def test_registered_sources_and_the_organism_extension_point() -> None:
    register_anchor_source("unit", lambda arg: [(f"{arg} prompt", None)])
    try:
        assert load_anchors("unit:calibration") == [("calibration prompt", None)]
    finally:
        ANCHOR_SOURCES.pop("unit")
    organism = load_anchors("organism:calibration,n=2")  # the organism's calibration split
    assert len(organism) == 4 and all(img is not None for _, img in organism)


def test_hash_depends_on_text_and_pixels_only() -> None:
    a = [("p", noise_image((8, 8), seed=1)), ("q", None)]
    same = [("p", noise_image((8, 8), seed=1)), ("q", None)]
    other_pixels = [("p", noise_image((8, 8), seed=2)), ("q", None)]
    other_order = list(reversed(a))
    digest, n = anchors_hash(a)
    assert n == 2 and digest == anchors_hash(same)[0]
    assert digest != anchors_hash(other_pixels)[0] and digest != anchors_hash(other_order)[0]


def test_validate_anchors_names_the_bad_item() -> None:
    assert validate_anchors(["a", ("b", None)]) == [("a", None), ("b", None)]
    with pytest.raises(ValueError, match="anchor 1: image is a str"):
        validate_anchors([("a", None), ("b", "img.png")])
    with pytest.raises(ValueError, match="anchor 0 must be"):
        validate_anchors([("a", None, 3)])
