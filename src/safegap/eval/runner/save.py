"""The run directory: reading what is done, checking a resume against ``config.json`` and
``judges.json``, and writing the merged ``samples.jsonl`` and ``summary.json``."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from safegap.eval.distributed import ProcessGroup
from safegap.eval.metrics import summarize
from safegap.eval.records import (
    Record,
    RunDirError,
    encode_records,
    fsync_dir,
    read_records,
    write_atomic,
    write_json_atomic,
)
from safegap.eval.run_guard import check_outcome, count_problems
from safegap.eval.runner.plan import IDENTITY_KEYS, EvalConfig, Plan


def record_key(record: Record) -> tuple[str, str, str, str]:
    return (record["benchmark"], record["sample_id"], record["condition"], record["defense"])


def _describe_change(key: str, then: Any, now: Any) -> str:
    if key == "defense_files" and isinstance(then, dict) and isinstance(now, dict):
        changed = sorted(
            path
            for spec in {*then, *now}
            for path in {*then.get(spec, {}), *now.get(spec, {})}
            if then.get(spec, {}).get(path) != now.get(spec, {}).get(path)
        )
        if changed:
            return f"defense file(s) changed since the run started: {', '.join(changed)}"
    return f"{key}: {then!r} in the run, {now!r} now"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise RunDirError(f"{path}: corrupt ({exc})") from exc


def finished_summary(path: Path) -> dict[str, Any] | None:
    """The summary of a finished run, or None when it is missing or corrupt (then regenerated)."""
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        return None
    return found if isinstance(found, dict) and "metrics" in found else None


class RunDir:
    """The files of one run directory as one process sees them."""

    def __init__(self, config: EvalConfig, group: ProcessGroup) -> None:
        self.config = config
        self.group = group
        self.out = Path(config.out)

    @property
    def samples_path(self) -> Path:
        return self.out / "samples.jsonl"

    def shard_path(self, rank: int) -> Path:
        return self.out / "shards" / f"rank-{rank}.jsonl"

    def writer_path(self) -> Path:
        return self.samples_path if self.group.world_size == 1 else self.shard_path(self.group.rank)

    def existing_records(self) -> list[Record]:
        paths = [self.samples_path, *sorted((self.out / "shards").glob("rank-*.jsonl"))]
        return [r for p in paths for r in read_records(p)]

    def check_config(self, has_results: bool) -> None:
        """A run directory with results must have been made with the same defining arguments.
        One without results (a run that failed before its first batch, e.g. on a wrong shift
        path) is taken over: its ``config.json`` is replaced by :meth:`write_config`."""
        path = self.out / "config.json"
        wanted = self.config.identity()
        if path.exists() and has_results:
            try:
                found = json.loads(path.read_text(encoding="utf-8"))
            except ValueError as exc:
                raise RunDirError(f"{path}: corrupt ({exc})") from exc
            diff = [k for k in {**found, **wanted} if k in IDENTITY_KEYS and found.get(k) != wanted.get(k)]
            if diff:
                shown = "; ".join(_describe_change(k, found.get(k), wanted.get(k)) for k in diff)
                raise RunDirError(f"{self.out} holds a different run ({shown}); use a new --out directory")

    def write_config(self, judge_versions: list[dict[str, str]]) -> None:
        """Record the run's defining arguments and judges (once the model, defenses and judges
        loaded): the files that changed, then one directory ``fsync`` for both."""
        if not self.group.is_main:
            return
        written = False
        for path, wanted in (
            (self.out / "judges.json", judge_versions),
            (self.out / "config.json", self.config.identity()),
        ):
            if not (path.exists() and _read_json(path) == wanted):
                self.out.mkdir(parents=True, exist_ok=True)
                write_json_atomic(path, wanted, sync_dir=False)
                written = True
        if written:
            fsync_dir(self.out)

    def check_judges(self, judge_versions: list[dict[str, str]], has_results: bool) -> None:
        path = self.out / "judges.json"
        found = _read_json(path) if path.exists() else None
        if found is not None and found != judge_versions and has_results:
            raise RunDirError(
                f"{self.out}: judges changed since the run started ({found} then, {judge_versions} now)"
            )

    def judge_ids(self, records: Sequence[Record]) -> list[str]:
        path = self.out / "judges.json"
        if path.exists():
            return [j["id"] for j in json.loads(path.read_text(encoding="utf-8"))]
        return list(dict.fromkeys(v["judge"] for r in records for v in r.get("verdicts") or []))

    def finalize(self, plan: Plan) -> dict[str, Any]:
        """Merge shards into ``samples.jsonl`` in plan order and write ``summary.json``."""
        order = {it.key: it.index for it in plan.items}
        merged: dict[tuple[str, str, str, str], Record] = {}
        for record in self.existing_records():
            merged.setdefault(record_key(record), record)
        unknown = [k for k in merged if k not in order]
        if unknown:
            raise RunDirError(
                f"{len(unknown)} record(s) in {self.out} are not part of this run's plan, e.g. "
                f"{unknown[0]} (did the benchmark data change?)"
            )
        missing = len(order) - len(merged)
        if missing:
            raise RunDirError(f"{self.out}: {missing} of {len(order)} samples have no record after the run")
        records = sorted(merged.values(), key=lambda r: order[record_key(r)])
        data = encode_records(records)
        if not self.samples_path.exists() or self.samples_path.read_bytes() != data:
            write_atomic(self.samples_path, data)
        if (self.out / "shards").exists():
            shutil.rmtree(self.out / "shards")
        judges = self.judge_ids(records)
        summary = summarize(records, judges, self.config.defenses, n_boot=self.config.n_boot, seed=0)
        summary["run"] = {
            **self.config.identity(),
            "judge_ids": judges,
            "n_records": len(records),
            **count_problems(records),
            "skipped_conditions": plan.skipped,
        }
        write_json_atomic(self.out / "summary.json", summary)
        check_outcome(records, self.out)
        return summary
