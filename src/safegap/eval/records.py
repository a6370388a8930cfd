"""Crash-safe per-sample results: append-only JSONL, one complete line per write.

Each batch's records go to disk as one ``os.write`` of whole lines followed by ``fsync``, so a
crash or ``SIGKILL`` leaves at most a torn *last* line. Readers ignore it, and the writer cuts it
off before appending (otherwise the next record would be glued to the fragment). A corrupt line
anywhere else is not a crash artefact and is reported, never skipped.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from safegap.files import (  # noqa: F401  (re-exported: the run directory writes through them)
    fsync_dir,
    remove_stale_temp_files,
    write_atomic,
    write_json_atomic,
)

Record = dict[str, Any]


class RunDirError(ValueError):
    """The run directory is inconsistent (corrupt results file, different configuration)."""


def encode_records(records: Iterable[Record]) -> bytes:
    return "".join(
        json.dumps(r, ensure_ascii=False, sort_keys=True, allow_nan=False) + "\n" for r in records
    ).encode("utf-8")


def read_records(path: Path, repair: bool = False) -> list[Record]:
    """Complete records of ``path`` (missing file: none). A torn last line is ignored, and cut
    off the file when ``repair``."""
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data) and repair:
        with open(path, "r+b") as handle:
            handle.truncate(end)
            handle.flush()
            os.fsync(handle.fileno())
    records: list[Record] = []
    for number, line in enumerate(data[:end].split(b"\n")[:-1], start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RunDirError(f"{path} line {number}: corrupt record ({exc})") from exc
        if not isinstance(obj, dict):
            raise RunDirError(f"{path} line {number}: not a JSON object")
        records.append(obj)
    return records


class RecordWriter:
    """Appends batches of records to one JSONL file, each batch in a single write + fsync."""

    def __init__(self, path: Path, repair: bool = True, sync: bool = True) -> None:
        """``repair``: cut a torn last line first (only for a file this process alone writes).
        ``sync``: ``fsync`` after each batch (results); off for logs, whose loss in a machine
        crash costs nothing (a killed process loses nothing either way: the write is done)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        if repair:
            read_records(path, repair=True)
        self.path = path
        self.sync = sync
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._syncing: threading.Thread | None = None
        self._sync_error: OSError | None = None
        self._pending_start = 0

    def append(self, records: Sequence[Record]) -> None:
        """Write one batch. Its ``fsync`` runs on a thread while the caller goes on (the next
        batch generates meanwhile: a few ms per batch off the critical path); it is waited for,
        and any error raised, before the next write and at :meth:`close`."""
        if not records:
            return
        self.wait()
        data = encode_records(records)
        start = os.lseek(self._fd, 0, os.SEEK_END)
        try:
            written = os.write(self._fd, data)
            while written < len(data):  # regular files write everything at once; be safe anyway
                written += os.write(self._fd, data[written:])
        except OSError as exc:  # e.g. a full disk: cut what part of the batch got in, name the file
            self._cut(start)
            raise OSError(exc.errno, f"cannot write {self.path}: {exc.strerror or exc}") from None
        if self.sync:
            self._pending_start = start
            self._syncing = threading.Thread(target=self._fsync, daemon=True)
            self._syncing.start()

    def _cut(self, start: int) -> None:
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, start)

    def _fsync(self) -> None:
        try:
            os.fsync(self._fd)
        except OSError as error:
            self._sync_error = error

    def wait(self) -> None:
        """Block until the last batch is on disk; if its ``fsync`` failed, cut that batch off
        again and raise the error, naming the file."""
        if self._syncing is not None:
            self._syncing.join()
            self._syncing = None
        if self._sync_error is not None:
            error, self._sync_error = self._sync_error, None
            self._cut(self._pending_start)
            raise OSError(error.errno, f"cannot write {self.path}: {error.strerror or error}") from None

    def close(self) -> None:
        if self._fd >= 0:
            try:
                self.wait()
            finally:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_writable(path: Path) -> None:
    """Fail now, naming ``path``, if a file cannot be created next to it (a read-only or full
    filesystem, a missing parent that cannot be made), before any long computation."""
    folder = path.parent
    probe = folder / f".{path.name}.probe{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as handle:
            handle.write(b"\0" * 4096)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        raise OSError(exc.errno, f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
