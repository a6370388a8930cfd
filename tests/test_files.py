"""safegap.files: the one atomic write every module uses."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from safegap.files import atomic_path, remove_stale_temp_files, write_atomic, write_json_atomic


def test_write_atomic_replaces_and_leaves_no_staging_file(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    target.write_text("old")
    write_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_a_failing_writer_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "plot.png"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plot.png"]


def test_an_os_error_is_one_line_naming_the_file(tmp_path: Path) -> None:
    target = tmp_path / "missing_dir" / "x.json"
    with pytest.raises(OSError, match=r"cannot write .*missing_dir/x\.json") as info:
        write_atomic(target, b"x")
    assert "\n" not in str(info.value)


def test_json_refuses_nan(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_json_atomic(tmp_path / "x.json", {"t": float("nan")})
    assert not list(tmp_path.iterdir())


def test_stale_staging_files_are_removed_and_nothing_else(tmp_path: Path) -> None:
    stale = tmp_path / f".summary.json.tmp{os.getpid() + 1}"
    stale.write_text("half")
    keep = tmp_path / ".notes.tmpx"
    keep.write_text("kept")
    assert remove_stale_temp_files(tmp_path) == [stale]
    assert keep.exists() and not stale.exists()
