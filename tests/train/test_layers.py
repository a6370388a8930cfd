"""Layer specs for TGA: ranges, the ``safegap layers`` JSON, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from safegap.train.layers import resolve_layer_spec


def test_ranges() -> None:
    assert resolve_layer_spec("4-7", 32) == [4, 5, 6, 7]
    assert resolve_layer_spec("2, 4-5,4", 8) == [2, 4, 5]
    assert resolve_layer_spec("all", 3) == [0, 1, 2]
    assert resolve_layer_spec("-1", 4) == [3]
    assert resolve_layer_spec([1, 0], 3) == [0, 1]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("7-4", "backwards"),
        ("a-b", "bad layer range"),
        ("10", "out of range.*8 decoder layers"),
        ("", "no layers"),
    ],
)
def test_bad_ranges(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_layer_spec(spec, 8)


@pytest.mark.parametrize(
    "payload",
    [
        {"safety_band": [2, 4]},
        {"safety_band": {"start": 2, "end": 4}},
        {"safety_band": {"layers": [2, 3, 4]}},
        {"layers": [4, 3, 2]},
    ],
)
def test_safety_band_json(tmp_path: Path, payload: dict[str, object]) -> None:
    path = tmp_path / "layers.json"
    path.write_text(json.dumps(payload), encoding="utf-8")
    assert resolve_layer_spec(str(path), 8) == [2, 3, 4]


def test_bad_json_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_layer_spec(str(tmp_path / "missing.json"), 8)
    empty = tmp_path / "empty.json"
    empty.write_text("{}", encoding="utf-8")
    with pytest.raises(ValueError, match="no 'safety_band'"):
        resolve_layer_spec(str(empty), 8)
    broken = tmp_path / "broken.json"
    broken.write_text("{", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON"):
        resolve_layer_spec(str(broken), 8)
    wide = tmp_path / "wide.json"
    wide.write_text(json.dumps({"safety_band": [6, 12]}), encoding="utf-8")
    with pytest.raises(ValueError, match="out of range"):
        resolve_layer_spec(str(wide), 8)
