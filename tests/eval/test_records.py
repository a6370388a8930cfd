"""Append-only JSONL: whole lines per write, torn last lines ignored and cut, corruption reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from safegap.eval.records import RecordWriter, RunDirError, read_records, write_atomic


def test_append_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    with RecordWriter(path) as writer:
        writer.append([{"a": 1}, {"a": 2, "text": "caf\u00e9 \n </script>"}])
        writer.append([])
        writer.append([{"a": 3}])
    assert read_records(path) == [{"a": 1}, {"a": 2, "text": "caf\u00e9 \n </script>"}, {"a": 3}]
    assert path.read_text(encoding="utf-8").count("\n") == 3


def test_torn_last_line_is_ignored_then_cut_before_appending(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_bytes(json.dumps({"a": 1}).encode() + b"\n" + b'{"a": 2, "gen')
    assert read_records(path) == [{"a": 1}]
    assert path.read_bytes().endswith(b'"gen'), "reading alone does not change the file"
    with RecordWriter(path) as writer:
        writer.append([{"a": 3}])
    assert read_records(path) == [{"a": 1}, {"a": 3}]


def test_corrupt_complete_line_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_text('{"a": 1}\nnot json\n{"a": 2}\n')
    with pytest.raises(RunDirError, match="line 2: corrupt record"):
        read_records(path)


def test_write_atomic_replaces(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    write_atomic(path, b"one")
    write_atomic(path, b"two")
    assert path.read_bytes() == b"two" and [p.name for p in tmp_path.iterdir()] == ["x.json"]
