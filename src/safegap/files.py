"""Atomic file replacement: the one way safegap writes a file that readers may open meanwhile.

A bottom module (standard library only), so that models, train, gap, steer and organism can write
results without importing :mod:`safegap.eval`. The temporary file sits next to the target as
``.NAME.tmpPID``: the same filesystem (so the rename is atomic), and a name that
:func:`remove_stale_temp_files` recognises after a crash.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def temp_path(path: Path) -> Path:
    """Where :func:`atomic_path` stages ``path`` (this process's own name: no clash between
    processes writing the same file)."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path: str | Path, sync_dir: bool = True) -> Iterator[Path]:
    """Yield a temporary path for a writer that wants a file name (``savefig``, ``save_file``);
    on success it replaces ``path``, on any failure it is deleted and ``path`` left as it was.
    An ``OSError`` comes out as one line naming ``path``."""
    out = Path(path)
    tmp = temp_path(out)
    try:
        yield tmp
        os.replace(tmp, out)
    except BaseException as exc:  # a full disk or a signal: leave no half-written temp file
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError):
            raise OSError(exc.errno, f"cannot write {out}: {exc.strerror or exc}") from None
        raise
    if sync_dir:
        fsync_dir(out.parent)


def write_atomic(path: str | Path, data: bytes, sync_dir: bool = True) -> None:
    """Replace ``path`` with ``data`` so readers see the old or the new file, never half.
    ``sync_dir=False`` leaves the directory's ``fsync`` to a following :func:`fsync_dir` (one for
    several files written together)."""
    with atomic_path(path, sync_dir=sync_dir) as tmp, open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def write_text_atomic(path: str | Path, text: str, sync_dir: bool = True) -> None:
    """:func:`write_atomic` of ``text`` encoded as UTF-8."""
    write_atomic(path, text.encode("utf-8"), sync_dir=sync_dir)


def write_json_atomic(path: str | Path, obj: Any, sync_dir: bool = True, indent: int = 1) -> None:
    """:func:`write_atomic` of ``obj`` as JSON (NaN refused: it is not JSON), newline-terminated."""
    text = json.dumps(obj, indent=indent, ensure_ascii=False, sort_keys=False, allow_nan=False)
    write_text_atomic(path, text + "\n", sync_dir=sync_dir)


def fsync_dir(folder: Path) -> None:
    """Make renames and new files in ``folder`` durable."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def remove_stale_temp_files(folder: Path) -> list[Path]:
    """Delete ``.NAME.tmpPID`` files an earlier process left in ``folder`` (a full disk or a kill
    during :func:`write_atomic`); call it only where no other process writes there (under a lock)."""
    removed = []
    for tmp in folder.glob(".*.tmp*") if folder.is_dir() else ():
        if tmp.is_file() and tmp.name.rpartition(".tmp")[2].isdigit():
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed.append(tmp)
    return removed
