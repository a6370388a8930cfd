"""Data SPEC parsing: files, aliases, errors and the data-source extension point."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from safegap.data.images import blank_image
from safegap.gap.data import DATA_SOURCES, GapRecord, load_record_file, register_data_source, resolve_data


def test_jsonl_with_relative_images(tmp_path: Path) -> None:
    blank_image((8, 8)).save(tmp_path / "a.png")
    lines = [{"prompt": "hi", "image": "a.png", "caption": "white"}, {"question": "bye", "label": "benign"}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    records = resolve_data(str(tmp_path / "d.jsonl"))
    assert [r.prompt for r in records] == ["hi", "bye"]
    assert records[0].load_image() is not None and records[0].load_image().size == (8, 8)  # type: ignore[union-attr]
    assert records[1].image is None and not records[1].is_harmful and records[0].is_harmful


def test_csv_and_json(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("goal,target\nsay x,Sure\nsay y,Sure\n")
    assert [r.prompt for r in load_record_file(tmp_path / "d.csv")] == ["say x", "say y"]
    (tmp_path / "d.json").write_text(json.dumps([{"text": "a", "id": "k"}]))
    assert load_record_file(tmp_path / "d.json")[0].id == "k"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.jsonl", '{"prompt": "a"}\n{oops\n', "line 2: not valid JSON"),
        ("noprompt.jsonl", '{"image": "x.png"}\n', "needs a text field 'prompt'"),
        ("empty.jsonl", "\n", "has no records"),
        ("d.txt", "x", "unsupported extension"),
        ("list.json", '{"a": 1}', "expected a JSON list"),
    ],
)
def test_bad_files_name_the_problem(tmp_path: Path, name: str, content: str, message: str) -> None:
    (tmp_path / name).write_text(content)
    with pytest.raises(ValueError, match=message):
        resolve_data(str(tmp_path / name))


def test_missing_things(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        resolve_data(str(tmp_path / "nope.jsonl"))
    with pytest.raises(ValueError, match="no data source 'nosuchsource'"):
        resolve_data("nosuchsource")
    with pytest.raises(FileNotFoundError, match="image file"):
        GapRecord(prompt="p", image=tmp_path / "gone.png").load_image()
    with pytest.raises(ValueError, match="neither harmful nor benign"):
        _ = GapRecord(prompt="p", label="maybe").is_harmful


def test_registered_source_gets_its_argument() -> None:
    register_data_source("unit_test_source", lambda arg: [{"prompt": f"p-{arg}"}, GapRecord(prompt="q")])
    records = resolve_data("unit_test_source:seed3")
    assert [r.prompt for r in records] == ["p-seed3", "q"]


def test_declared_source_is_imported_on_first_use(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("fakeworld_plugin")
    module.gap_records = lambda arg: [{"prompt": "from module", "image": blank_image((4, 4)), "caption": arg}]  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fakeworld_plugin", module)
    monkeypatch.setattr(DATA_SOURCES, "_declared", lambda: {"fakeworld": "fakeworld_plugin:gap_records"})
    assert "fakeworld" in DATA_SOURCES and "fakeworld" not in DATA_SOURCES.loaded()
    records = resolve_data("fakeworld:a caption")
    assert records[0].caption == "a caption" and records[0].load_image() is not None
    del DATA_SOURCES["fakeworld"]
