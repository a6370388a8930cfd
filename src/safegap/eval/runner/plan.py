"""What a run is and what it has to do: :class:`EvalConfig`, its checks, and the plan of work
items cut into batches (no model needed; see :mod:`safegap.eval.runner` for the order)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from safegap.data.benchmarks import (
    Benchmark,
    BenchmarkError,
    DataContext,
    Sample,
    limit_samples,
    load_benchmark,
    resolve_benign_images,
    resolve_data_dir,
)
from safegap.errors import finite_float, redact
from safegap.eval.run_guard import LONG_PROMPT_POLICIES
from safegap.eval.wrappers import check_defense_names, defense_files
from safegap.judge.base import JUDGES
from safegap.models.checks import check_device

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


@dataclass
class EvalConfig:
    """Everything ``safegap eval`` takes; :meth:`identity` is what a resumed run must repeat."""

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

    def identity(self) -> dict[str, Any]:
        """The defining arguments, plus the content hash of every file a defense spec names
        (``defense_files``: a shift recalibrated under the same path is a different run)."""
        data = asdict(self)
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
        check_defense_names(spec)
    _check_judge_names(config.judges)
    if len(set(config.defenses)) != len(config.defenses):
        raise ValueError(f"a defense is listed twice: {', '.join(config.defenses)}")
    benchmarks = [load_benchmark(spec, context) for spec in config.benchmarks]
    if len({b.id for b in benchmarks}) != len(benchmarks):
        raise ValueError(f"a benchmark is listed twice: {', '.join(config.benchmarks)}")
    plan = make_plan(
        benchmarks, config.conditions, config.defenses, config.limit, config.batch_size, config.sort_by_length
    )
    if not plan.batches:
        raise BenchmarkError(f"nothing to evaluate: {', '.join(config.benchmarks)} gave no samples")
    return benchmarks, plan
