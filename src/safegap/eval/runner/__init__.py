"""The evaluation harness: benchmarks x conditions x defenses -> generations -> judges -> summary.

Entry point: build an :class:`EvalConfig` and call :func:`run_eval` (with a loaded ``vlm`` to
reuse one already in memory)::

    from safegap.eval.runner import EvalConfig, run_eval
    result = run_eval(EvalConfig(model="llava-hf/llava-1.5-7b-hf", benchmarks=["figstep"], out="runs/a"))
    result.summary["metrics"]

The concerns live in submodules: :mod:`~safegap.eval.runner.plan` (the config, its checks and the
plan of work), :mod:`~safegap.eval.runner.run` (the generation loop), :mod:`~safegap.eval.runner.save`
(the run directory and ``summary.json``) and :mod:`~safegap.eval.runner.render` (result tables).

Work is planned up front in a fixed order (defense, benchmark, condition, sample) and cut into
batches of ``batch_size`` rows that share a defense, benchmark and condition. Within one (defense,
benchmark, condition) the rows are batched longest prompt first, so that a batch holds prompts of
similar length (less left padding to compute) and a batch too large for memory fails at the
start; ``samples.jsonl`` keeps the benchmark's order. A batch is the unit of generation, of
sharding across processes and of writing: its records are appended to the run's JSONL in one
write + fsync once it is generated and judged. Resuming skips every record
already on disk, so a crash or kill loses at most the batches in flight, and a finished run
re-run with the same arguments does nothing.

Determinism: greedy decoding by default; with sampling, each batch is seeded from the run seed
and the batch's id, so results do not depend on which process ran a batch or on interruptions.

Run directory:

- ``config.json``: the arguments that define the run (checked on ``--resume``);
- ``judges.json``: ids and versions of the judges (checked on ``--resume``);
- ``samples.jsonl``: one record per (sample, condition, defense), in plan order once finished;
- ``shards/rank-N.jsonl``: per-process results of a multi-process run until they are merged;
- ``summary.json``: see :mod:`safegap.eval.metrics`;
- ``events.jsonl``: one line per process and session (rank, world size, samples generated,
  seconds); the only file with timings, kept apart so results stay byte-identical.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from safegap.eval.distributed import ProcessGroup, current_group
from safegap.eval.records import RunDirError, remove_stale_temp_files
from safegap.eval.run_guard import RunLock
from safegap.eval.runner.plan import (
    IDENTITY_FIELDS,
    IDENTITY_KEYS,
    Batch,
    EvalConfig,
    Plan,
    WorkItem,
    check_settings,
    make_plan,
    prepare,
)
from safegap.eval.runner.run import Harness, SampleError
from safegap.eval.runner.save import RunDir, finished_summary, record_key

__all__ = [
    "IDENTITY_FIELDS",
    "IDENTITY_KEYS",
    "Batch",
    "EvalConfig",
    "EvalResult",
    "Plan",
    "SampleError",
    "WorkItem",
    "check_settings",
    "make_plan",
    "prepare",
    "record_key",
    "run_eval",
]


@dataclass
class EvalResult:
    """``summary`` is None on processes other than the main one."""

    run_dir: Path
    summary: dict[str, Any] | None
    planned: int
    generated: int
    already_done: int
    no_op: bool = False


def run_eval(
    config: EvalConfig,
    vlm: Any | None = None,
    group: ProcessGroup | None = None,
    console: Console | None = None,
) -> EvalResult:
    """Run (or resume, or skip when finished) the evaluation described by ``config``.

    ``vlm``: a loaded model to use instead of loading ``config.model`` (which then only names the
    run); ``group``: the process group of a multi-process run (default: this process alone);
    ``console``: where progress goes (default: stderr). The run directory is locked for the whole
    call (:class:`~safegap.eval.run_guard.RunLock`); bad input raises a one-line error before
    anything is written."""
    group = group or current_group()
    _, plan = prepare(config)
    if config.strict:
        for item in plan.items:
            if item.sample.error:
                raise SampleError(f"{item.describe()}: {item.sample.error}")
    with RunLock(Path(config.out), group.rank, group.world_size):
        if group.is_main:
            remove_stale_temp_files(Path(config.out))
        return _run_locked(config, plan, vlm, group, console or Console(stderr=True))


def _run_locked(
    config: EvalConfig, plan: Plan, vlm: Any | None, group: ProcessGroup, console: Console
) -> EvalResult:
    run_dir = RunDir(config, group)
    planned = {it.key for it in plan.items}
    # Every process reads what is already done before any of them writes (the barrier).
    existing = {record_key(r) for r in run_dir.existing_records()}
    run_dir.check_config(has_results=bool(existing))
    group.barrier()
    done = existing & planned
    out = run_dir.out
    if done == planned:
        summary_path = out / "summary.json"
        finished = finished_summary(summary_path) if summary_path.exists() else None
        if finished is not None and not (out / "shards").exists():
            return EvalResult(out, finished, len(planned), 0, len(done), no_op=True)
        summary = run_dir.finalize(plan) if group.is_main else None
        group.barrier()
        return EvalResult(out, summary, len(planned), 0, len(done))
    if existing and not config.resume:
        raise RunDirError(
            f"{out} already holds {len(done)} of {len(planned)} results; pass --resume to continue "
            "or choose a new --out directory"
        )
    for note in plan.skipped:
        if group.is_main and config.progress:
            bench, _, cond = note.rpartition(":")
            console.print(f"note: benchmark {bench} does not offer condition {cond!r}; skipped")
    harness = Harness(config, group, console, run_dir)
    harness.load(vlm)
    run_dir.check_judges(harness.judge_versions(), has_results=bool(existing))
    run_dir.write_config(harness.judge_versions())
    generated = harness.execute(plan, done)
    group.barrier()
    summary = run_dir.finalize(plan) if group.is_main else None
    group.barrier()
    return EvalResult(out, summary, len(planned), generated, len(done))
