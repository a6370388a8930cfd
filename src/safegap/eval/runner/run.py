"""The generation loop: one process loads the model, defenses and judges, then generates,
judges and appends each of its batches (see :mod:`safegap.eval.runner` for sharding, seeding
and what a crash loses)."""

from __future__ import annotations

import time
from collections.abc import Sequence
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

from safegap.data.benchmarks import BenchmarkError, ImageLoadError, Request
from safegap.data.benchmarks.base import stable_seed
from safegap.eval.defenses import Defense
from safegap.eval.distributed import ProcessGroup
from safegap.eval.records import Record, RecordWriter
from safegap.eval.run_guard import fit_prompt, prompt_limit
from safegap.eval.runner.plan import Batch, EvalConfig, Plan, WorkItem
from safegap.eval.runner.save import RunDir
from safegap.eval.wrappers import build_defense, configure_generation, defense_details
from safegap.judge.base import Judge, JudgeInput, judge_safely, make_judge
from safegap.models.preprocess import map_in_threads


class SampleError(ValueError):
    """A per-sample problem under ``--strict`` (one line naming the sample)."""


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
    """One process's generation loop over its share of a :class:`Plan`."""

    def __init__(self, config: EvalConfig, group: ProcessGroup, console: Console, run_dir: RunDir) -> None:
        self.config = config
        self.group = group
        self.console = console
        self.run_dir = run_dir
        self.vlm: Any = None
        self.judges: list[Judge] = []
        self.defenses: dict[str, Defense] = {}

    def judge_versions(self) -> list[dict[str, str]]:
        return [{"id": j.id, "version": j.version} for j in self.judges]

    # -- models ---------------------------------------------------------------------------------
    def load(self, vlm: Any | None) -> None:
        if vlm is None:
            from safegap.models import load_vlm

            device = self.config.device or self.group.device
            vlm = load_vlm(
                self.config.model, dtype=self.config.dtype, device=device, layers_path=self.config.layers_path
            )
        self.vlm = vlm
        self.judges = [make_judge(spec) for spec in self.config.judges]
        ids = [j.id for j in self.judges]
        if len(set(ids)) != len(ids):
            raise ValueError(f"the same judge is listed twice: {', '.join(ids)}")
        for spec in self.config.defenses:
            defense = build_defense(spec, vlm)
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
            RecordWriter(self.run_dir.writer_path()) as writer,
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
        with RecordWriter(self.run_dir.out / "events.jsonl", repair=False, sync=False) as events:
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
