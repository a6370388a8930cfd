"""The evaluation harness: benchmarks x conditions x defenses -> generations -> judges -> summary.

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

import copy
import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from safegap.data.benchmarks import (
    Benchmark,
    BenchmarkError,
    DataContext,
    ImageLoadError,
    Request,
    Sample,
    limit_samples,
    resolve_benign_images,
    resolve_data_dir,
)
from safegap.data.benchmarks.base import stable_seed
from safegap.errors import finite_float, redact
from safegap.eval import objects as given
from safegap.eval.defenses import Defense
from safegap.eval.distributed import ProcessGroup, current_group
from safegap.eval.metrics import summarize
from safegap.eval.objects import split_objects
from safegap.eval.records import (
    Record,
    RecordWriter,
    RunDirError,
    encode_records,
    fsync_dir,
    read_records,
    remove_stale_temp_files,
    write_atomic,
    write_json_atomic,
)
from safegap.eval.run_guard import (
    LONG_PROMPT_POLICIES,
    RunLock,
    check_outcome,
    count_problems,
    fit_prompt,
    prompt_limit,
)
from safegap.eval.wrappers import (
    check_defense_names,
    configure_generation,
    defense_details,
    defense_files,
)
from safegap.judge.base import JUDGES, Judge, JudgeInput, judge_safely
from safegap.models.checks import check_device
from safegap.models.preprocess import map_in_threads

#: Settings that define a run's results; a resume must use the same values.
IDENTITY_FIELDS = (
    "model",
    "benchmarks",
    "conditions",
    "defenses",
    "judges",
    "limit",
    "max_new_tokens",
    "seed",
    "temperature",
    "top_p",
)


#: Keys of ``config.json`` compared on resume (``long_prompts`` only written when not the default).
IDENTITY_KEYS = (*IDENTITY_FIELDS, "defense_files", "long_prompts")


class SampleError(ValueError):
    """A per-sample problem under ``--strict`` (one line naming the sample)."""


@dataclass
class EvalConfig:
    """Everything ``safegap eval`` takes; :meth:`identity` is what a resumed run must repeat.

    ``benchmarks``, ``defenses`` and ``judges`` take spec strings or objects (named by their
    ``id``; kept in ``objects``, :mod:`safegap.eval.objects`)."""

    model: str
    benchmarks: list[str]
    out: str | Path
    conditions: list[str] | None = None
    defenses: list[str] = field(default_factory=lambda: ["none"])
    judges: list[str] = field(default_factory=lambda: ["refusal"])
    data_dir: str | None = None
    benign_images: str | None = None
    limit: int | None = None
    batch_size: int = 16
    max_new_tokens: int = 128
    seed: int = 0
    temperature: float = 0.0
    top_p: float = 1.0
    resume: bool = False
    strict: bool = False
    dtype: str | None = None
    device: str | None = None
    layers_path: str | None = None
    progress: bool = True
    n_boot: int = 2000
    #: Batch rows by prompt length (longest first) instead of in benchmark order. Greedy results
    #: are the same either way; with sampling, a batch's seed covers different rows.
    sort_by_length: bool = True
    #: A prompt longer than the model takes: ``error`` (an errored sample) or ``truncate``.
    long_prompts: str = "error"
    objects: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.benchmarks = split_objects("benchmark", self.benchmarks, self.objects)
        self.defenses = split_objects("defense", self.defenses, self.objects)
        self.judges = split_objects("judge", self.judges, self.objects)

    def identity(self) -> dict[str, Any]:
        """The defining arguments, plus the content hash of every file a defense spec names
        (``defense_files``: a shift recalibrated under the same path is a different run)."""
        data = {k: copy.deepcopy(getattr(self, k)) for k in IDENTITY_FIELDS}
        out = {k: data[k] for k in IDENTITY_FIELDS}
        out["judges"] = [redact(spec) for spec in self.judges]  # never write a URL's credentials
        files = {spec: found for spec in self.defenses if (found := defense_files(spec))}
        if files:
            out["defense_files"] = files
        if self.long_prompts != "error":
            out["long_prompts"] = self.long_prompts
        return out

    def generation_kwargs(self) -> dict[str, Any]:
        if self.temperature <= 0:
            return {}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p}


@dataclass(frozen=True)
class WorkItem:
    """One (sample, condition, defense) to generate; ``index`` is its place in the plan."""

    index: int
    benchmark: Benchmark
    sample: Sample
    condition: str
    defense: str

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.benchmark.id, self.sample.id, self.condition, self.defense)

    def describe(self) -> str:
        return f"{self.benchmark.id} sample {self.sample.id} ({self.condition}, {self.defense})"


@dataclass
class Batch:
    id: str
    defense: str
    items: list[WorkItem]


@dataclass
class Plan:
    batches: list[Batch]
    skipped: list[str]

    @property
    def items(self) -> list[WorkItem]:
        """Every work item in plan order (``index``), whatever order the batches take them in."""
        return sorted((it for b in self.batches for it in b.items), key=lambda it: it.index)


@dataclass
class EvalResult:
    """``summary`` is None on processes other than the main one."""

    run_dir: Path
    summary: dict[str, Any] | None
    planned: int
    generated: int
    already_done: int
    no_op: bool = False


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


def record_key(record: Record) -> tuple[str, str, str, str]:
    return (record["benchmark"], record["sample_id"], record["condition"], record["defense"])


def _check_judge_names(specs: Sequence[str]) -> None:
    for spec in specs:
        name = spec.partition(":")[0].strip()
        if name not in JUDGES:
            raise ValueError(f"unknown judge {name!r}; known: {', '.join(sorted(JUDGES))}")


def prompt_length(bench: Benchmark, sample: Sample, condition: str) -> int:
    """Characters of the prompt ``sample`` gets under ``condition`` (0 where it has none yet: an
    errored sample or a request that fails, which the batch records as an error later)."""
    if sample.error:
        return 0
    try:
        return len(bench.request(sample, condition).prompt)
    except (BenchmarkError, KeyError, ValueError, OSError):
        return 0


def make_plan(
    benchmarks: Sequence[Benchmark],
    conditions: Sequence[str] | None,
    defenses: Sequence[str],
    limit: int | None,
    batch_size: int,
    sort_by_length: bool = True,
) -> Plan:
    """Every (defense, benchmark, condition, sample) in a fixed order, cut into batches.

    Explicit ``conditions`` apply to each benchmark that offers them (every benchmark offers the
    generic ones); a condition no benchmark offers is an error; skipped pairs are listed.
    ``index`` follows the benchmark's sample order; with ``sort_by_length`` the batches of one
    (defense, benchmark, condition) take its rows longest prompt first (ties in sample order)."""
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    per_bench: list[tuple[Benchmark, list[str]]] = []
    skipped: list[str] = []
    for bench in benchmarks:
        if conditions is None:
            wanted = list(bench.default_conditions())
        else:
            wanted = [c for c in conditions if c in bench.conditions()]
            skipped += [f"{bench.id}:{c}" for c in conditions if c not in bench.conditions()]
        for condition in wanted:
            bench.check_condition(condition)
        per_bench.append((bench, wanted))
    if conditions is not None:
        for condition in conditions:
            if not any(condition in wanted for _, wanted in per_bench):
                offered = sorted({c for b in benchmarks for c in b.conditions()})
                raise BenchmarkError(
                    f"no benchmark offers condition {condition!r}; offered: {', '.join(offered)}"
                )
    batches: list[Batch] = []
    index = 0
    for defense in defenses:
        for bench, wanted in per_bench:
            samples = limit_samples(bench.samples(), limit)
            for condition in wanted:
                rows = list(range(len(samples)))
                if sort_by_length:
                    lengths = [prompt_length(bench, s, condition) for s in samples]
                    rows.sort(key=lambda p: -lengths[p])
                for start in range(0, len(rows), batch_size):
                    items = [
                        WorkItem(index + p, bench, samples[p], condition, defense)
                        for p in rows[start : start + batch_size]
                    ]
                    batches.append(
                        Batch(f"{defense}|{bench.id}|{condition}|{start // batch_size}", defense, items)
                    )
                index += len(samples)
    return Plan(batches, skipped)


def _load_item(item: WorkItem) -> tuple[Request | None, Image.Image | Exception | None]:
    """The request and image of one work item, or the problem that stops it (images of a batch
    load in threads: decoding, drawing and file reads release the GIL)."""
    if item.sample.error:
        return None, None
    request: Request | None = None
    try:
        request = item.benchmark.request(item.sample, item.condition)
        image = item.benchmark.load_image(request.image, item.sample) if request.image else None
    except (ImageLoadError, BenchmarkError, OSError, KeyError, ValueError) as exc:
        return request, exc
    return request, image


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(
            "-- samples/s" if speed is None else f"{speed:.2f} samples/s", style="progress.data.speed"
        )


class Harness:
    """One process's view of a run; :func:`run_eval` is the entry point."""

    def __init__(self, config: EvalConfig, group: ProcessGroup, console: Console) -> None:
        self.config = config
        self.group = group
        self.console = console
        self.out = Path(config.out)
        self.vlm: Any = None
        self.judges: list[Judge] = []
        self.defenses: dict[str, Defense] = {}

    # -- run directory ------------------------------------------------------------------------
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

    def judge_versions(self) -> list[dict[str, str]]:
        return [{"id": j.id, "version": j.version} for j in self.judges]

    def write_config(self) -> None:
        """Record the run's defining arguments and judges (once the model, defenses and judges
        loaded): the files that changed, then one directory ``fsync`` for both."""
        if not self.group.is_main:
            return
        written = False
        for path, wanted in (
            (self.out / "judges.json", self.judge_versions()),
            (self.out / "config.json", self.config.identity()),
        ):
            if not (path.exists() and _read_json(path) == wanted):
                self.out.mkdir(parents=True, exist_ok=True)
                write_json_atomic(path, wanted, sync_dir=False)
                written = True
        if written:
            fsync_dir(self.out)

    def check_judges(self, has_results: bool) -> None:
        path = self.out / "judges.json"
        ids = self.judge_versions()
        found = _read_json(path) if path.exists() else None
        if found is not None and found != ids and has_results:
            raise RunDirError(f"{self.out}: judges changed since the run started ({found} then, {ids} now)")

    def judge_ids(self, records: Sequence[Record]) -> list[str]:
        path = self.out / "judges.json"
        if path.exists():
            return [j["id"] for j in json.loads(path.read_text(encoding="utf-8"))]
        return list(dict.fromkeys(v["judge"] for r in records for v in r.get("verdicts") or []))

    # -- models ---------------------------------------------------------------------------------
    def load(self, vlm: Any | None) -> None:
        if vlm is None:
            from safegap.models import load_vlm

            device = self.config.device or self.group.device
            vlm = load_vlm(
                self.config.model, dtype=self.config.dtype, device=device, layers_path=self.config.layers_path
            )
        self.vlm = vlm
        self.judges = [given.judge(spec, self.config.objects) for spec in self.config.judges]
        ids = [j.id for j in self.judges]
        if len(set(ids)) != len(ids):
            raise ValueError(f"the same judge is listed twice: {', '.join(ids)}")
        for spec in self.config.defenses:
            defense = given.defense(spec, vlm, self.config.objects)
            configure_generation(defense, self.config.batch_size, self.config.generation_kwargs())
            self.defenses[spec] = defense

    # -- one batch ----------------------------------------------------------------------------
    def _problem(self, item: WorkItem, reason: str) -> None:
        if self.config.strict:
            raise SampleError(f"{item.describe()}: {reason}")

    def base_record(self, item: WorkItem, request: Request | None) -> Record:
        s = item.sample
        return {
            "benchmark": item.benchmark.id,
            "sample_id": s.id,
            "category": s.category,
            "harmful": s.harmful,
            "condition": item.condition,
            "defense": item.defense,
            "prompt": request.prompt if request else None,
            "objective": s.text,
            "image": item.benchmark.describe_image(request.image) if request else None,
            "meta": dict(s.fields),
            "generation": None,
            "error": None,
            "verdicts": [],
        }

    def fit(self, item: WorkItem, request: Request) -> tuple[Request, str | None, bool]:
        """``request`` with a prompt that fits the model (or the error saying it does not)."""
        tokenizer = getattr(self.vlm, "tokenizer", None)
        if tokenizer is None:
            return request, None, False
        limit = prompt_limit(self.vlm, self.config.max_new_tokens)
        prompt, error, cut = fit_prompt(tokenizer, request.prompt, limit, self.config.long_prompts)
        return (Request(prompt, request.image) if cut else request), error, cut

    def run_batch(self, batch: Batch, items: Sequence[WorkItem]) -> list[Record]:
        records: dict[int, Record] = {}
        ready: list[tuple[WorkItem, Request, Image.Image | None]] = []
        truncated: set[int] = set()
        for item, (request, loaded) in zip(items, map_in_threads(_load_item, items), strict=True):
            too_long: str | None = None
            if request is not None and not isinstance(loaded, Exception) and not item.sample.error:
                request, too_long, cut = self.fit(item, request)
                if cut:
                    truncated.add(item.index)
            if too_long is not None:
                self._problem(item, too_long)
                records[item.index] = {**self.base_record(item, request), "error": too_long}
                continue
            if item.sample.error:
                self._problem(item, item.sample.error)
                records[item.index] = {**self.base_record(item, None), "error": item.sample.error}
            elif isinstance(loaded, Exception):
                reason = str(loaded).splitlines()[0] if str(loaded) else type(loaded).__name__
                self._problem(item, reason)
                records[item.index] = {**self.base_record(item, request), "error": reason}
            else:
                assert request is not None
                ready.append((item, request, loaded))
        if ready:
            torch.manual_seed(stable_seed(str(self.config.seed), batch.id))
            replies, details = self._generate(batch.defense, ready)
            done = []
            for (item, request, image), reply, detail in zip(ready, replies, details, strict=True):
                record = self.base_record(item, request)
                if isinstance(reply, BaseException):
                    record["error"] = (
                        f"generation failed: {type(reply).__name__}: {str(reply).splitlines()[0] if str(reply) else ''}"
                    )
                    records[item.index] = record
                    continue
                record["generation"] = reply
                if item.index in truncated:
                    record["prompt_truncated"] = True
                if not str(reply).strip():  # e.g. a NaN shift: recorded, never judged
                    record["empty_generation"] = True
                    self._problem(item, "empty generation")
                    records[item.index] = record
                    continue
                if detail:
                    record["defense_details"] = detail
                records[item.index] = record
                done.append((item, request, image, record))
            self._judge(done)
        return [records[i] for i in sorted(records)]

    def _generate(
        self, defense_spec: str, rows: Sequence[tuple[WorkItem, Request, Image.Image | None]]
    ) -> tuple[list[str | BaseException], list[dict[str, Any] | None]]:
        defense = self.defenses[defense_spec]
        texts = [request.prompt for _, request, _ in rows]
        images = [image for _, _, image in rows]
        images_arg = images if any(img is not None for img in images) else None
        cfg = self.config
        try:
            replies: list[str | BaseException] = list(
                defense.generate(self.vlm, texts, images_arg, cfg.max_new_tokens)
            )
            details = defense_details(defense)
            return replies, list(details) if details and len(details) == len(rows) else [None] * len(rows)
        except Exception as exc:
            if cfg.strict:
                raise SampleError(
                    f"{rows[0][0].describe()} (batch of {len(rows)}): generation failed: {exc}"
                ) from exc
            if len(rows) == 1:
                return [exc], [None]
        out: list[str | BaseException] = []
        for text, image in zip(texts, images, strict=True):
            try:
                out.extend(
                    defense.generate(self.vlm, [text], None if image is None else [image], cfg.max_new_tokens)
                )
            except Exception as exc:  # noqa: BLE001 - recorded as an errored sample
                out.append(exc)
        return out, [None] * len(rows)

    def _judge(self, done: Sequence[tuple[WorkItem, Request, Image.Image | None, Record]]) -> None:
        if not done:
            return
        inputs = [
            JudgeInput(
                prompt=request.prompt,
                reply=record["generation"],
                objective=item.sample.text,
                image=image,
                harmful=item.sample.harmful,
                category=item.sample.category,
            )
            for item, request, image, record in done
        ]
        for judge in self.judges:
            try:
                verdicts = judge_safely(judge, inputs, strict=self.config.strict)
            except Exception as exc:  # only under --strict: judge_safely records failures otherwise
                raise SampleError(f"{done[0][0].describe()}: judge {judge.id} failed: {exc}") from exc
            for (item, _, _, record), verdict in zip(done, verdicts, strict=True):
                if verdict.error:
                    self._problem(item, f"judge {judge.id}: {verdict.error}")
                record["verdicts"].append({"judge": judge.id, "version": judge.version, **verdict.as_dict()})

    # -- the run ----------------------------------------------------------------------------------
    def execute(self, plan: Plan, done: set[tuple[str, str, str, str]]) -> int:
        world, rank = self.group.world_size, self.group.rank
        mine = [
            (b, [it for it in b.items if it.key not in done])
            for g, b in enumerate(plan.batches)
            if g % world == rank
        ]
        mine = [(b, items) for b, items in mine if items]
        total = sum(len(items) for _, items in mine)
        generated = 0
        start = time.perf_counter()
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            _RateColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
        )
        show = self.config.progress and self.group.is_main
        with (
            RecordWriter(self.writer_path()) as writer,
            Progress(*columns, console=self.console, disable=not show, transient=False) as progress,
        ):
            task = progress.add_task("eval", total=total)
            for batch, items in mine:
                progress.update(
                    task, description=f"{batch.defense} | {items[0].benchmark.id} | {items[0].condition}"
                )
                records = self.run_batch(batch, items)
                writer.append(records)
                generated += len(records)
                progress.advance(task, len(records))
        with RecordWriter(self.out / "events.jsonl", repair=False, sync=False) as events:
            seconds = time.perf_counter() - start
            events.append(
                [
                    {
                        "event": "session",
                        "rank": rank,
                        "world_size": world,
                        "generated": generated,
                        "seconds": round(seconds, 3),
                        "samples_per_second": round(generated / seconds, 3) if seconds > 0 else None,
                    }
                ]
            )
        return generated

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


def check_settings(config: EvalConfig) -> None:
    """Numeric settings that would run but mean nothing (one-line errors naming the option)."""
    if config.limit is not None and config.limit < 1:
        raise ValueError(f"--limit must be at least 1, got {config.limit}")
    if config.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be at least 1, got {config.max_new_tokens}")
    finite_float(config.temperature, "--temperature")
    finite_float(config.top_p, "--top-p")
    if config.temperature < 0:
        raise ValueError(f"--temperature must be >= 0 (0 = greedy), got {config.temperature}")
    if not 0 < config.top_p <= 1:
        raise ValueError(f"--top-p must be in (0, 1], got {config.top_p}")
    check_device(config.device)


def prepare(config: EvalConfig) -> tuple[list[Benchmark], Plan]:
    """Load and validate benchmarks and names, and plan the work (no model needed)."""
    check_settings(config)
    if config.long_prompts not in LONG_PROMPT_POLICIES:
        raise ValueError(f"--long-prompts {config.long_prompts!r}: use {' or '.join(LONG_PROMPT_POLICIES)}")
    context = DataContext(
        resolve_data_dir(config.data_dir), resolve_benign_images(config.benign_images), config.model
    )
    if not config.benchmarks:
        raise ValueError("no benchmark given (--bench)")
    for spec in config.defenses:
        if spec not in config.objects:
            check_defense_names(spec)
    _check_judge_names([spec for spec in config.judges if spec not in config.objects])
    if len(set(config.defenses)) != len(config.defenses):
        raise ValueError(f"a defense is listed twice: {', '.join(config.defenses)}")
    benchmarks = [given.benchmark(spec, context, config.objects) for spec in config.benchmarks]
    if len({b.id for b in benchmarks}) != len(benchmarks):
        raise ValueError(f"a benchmark is listed twice: {', '.join(config.benchmarks)}")
    plan = make_plan(
        benchmarks, config.conditions, config.defenses, config.limit, config.batch_size, config.sort_by_length
    )
    if not plan.batches:
        raise BenchmarkError(f"nothing to evaluate: {', '.join(config.benchmarks)} gave no samples")
    return benchmarks, plan


def run_eval(
    config: EvalConfig,
    vlm: Any | None = None,
    group: ProcessGroup | None = None,
    console: Console | None = None,
) -> EvalResult:
    """Run (or resume, or skip when finished) the evaluation described by ``config``; the run
    directory is locked for the whole call (:class:`~safegap.eval.run_guard.RunLock`)."""
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


def _finished_summary(path: Path) -> dict[str, Any] | None:
    """The summary of a finished run, or None when it is corrupt (then regenerated)."""
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        return None
    return found if isinstance(found, dict) and "metrics" in found else None


def _run_locked(
    config: EvalConfig, plan: Plan, vlm: Any | None, group: ProcessGroup, console: Console
) -> EvalResult:
    harness = Harness(config, group, console)
    planned = {it.key for it in plan.items}
    # Every process reads what is already done before any of them writes (the barrier).
    existing = {record_key(r) for r in harness.existing_records()}
    harness.check_config(has_results=bool(existing))
    group.barrier()
    done = existing & planned
    out = harness.out
    if done == planned:
        summary_path = out / "summary.json"
        finished = _finished_summary(summary_path) if summary_path.exists() else None
        if finished is not None and not (out / "shards").exists():
            return EvalResult(out, finished, len(planned), 0, len(done), no_op=True)
        summary = harness.finalize(plan) if group.is_main else None
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
    harness.load(vlm)
    harness.check_judges(has_results=bool(existing))
    harness.write_config()
    generated = harness.execute(plan, done)
    group.barrier()
    summary = harness.finalize(plan) if group.is_main else None
    group.barrier()
    return EvalResult(out, summary, len(planned), generated, len(done))
