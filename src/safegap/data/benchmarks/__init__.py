"""Benchmark registry: ``load_benchmark("figstep_tiny", context)`` and friends.

Each benchmark is one small module here that registers a :class:`Benchmark` subclass; importing
this package registers them all. Benchmarks from elsewhere (the organism's) declare themselves
in the ``safegap.benchmarks`` entry-point group (:mod:`safegap.plugins`) and are imported on
first use, so this package imports none of them. Specs are ``NAME`` or ``NAME:PATH[,key=value...]`` (a path
overrides where the files are, e.g. ``text_csv:my_prompts.csv``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from safegap.data.benchmarks import (  # noqa: F401  (each module registers its benchmarks)
    figstep,
    harmbench,
    jailbreakv,
    mm_safetybench,
    mmbench,
    mme,
    mossbench,
    pope,
    scienceqa,
    text_sets,
    vlsafe,
    vqa_sets,
    xstest,
)
from safegap.data.benchmarks.base import (
    BENCHMARKS,
    GENERIC_CONDITIONS,
    Benchmark,
    BenchmarkError,
    DataContext,
    ImageLoadError,
    ImageRef,
    Request,
    Sample,
    register_benchmark,
    resolve_benign_images,
    resolve_data_dir,
)
from safegap.specs import parse_spec

__all__ = [
    "BENCHMARKS",
    "GENERIC_CONDITIONS",
    "Benchmark",
    "BenchmarkError",
    "DataContext",
    "ImageLoadError",
    "ImageRef",
    "Request",
    "Sample",
    "limit_samples",
    "load_benchmark",
    "register_benchmark",
    "resolve_benign_images",
    "resolve_data_dir",
]


def load_benchmark(spec: str, context: DataContext | None = None) -> Benchmark:
    """The benchmark for ``spec`` (not yet read: call ``.samples()``); unknown names fail with
    the list of known ones."""
    parsed = parse_spec(spec, kind="benchmark")
    if parsed.name not in BENCHMARKS:
        raise BenchmarkError(f"unknown benchmark {parsed.name!r}; known: {BENCHMARKS.known()}")
    cls = BENCHMARKS[parsed.name]
    parsed.check_options(cls.option_keys, "benchmark")
    return cls(str(parsed), parsed.arg, parsed.options, context or DataContext())


def limit_samples(samples: Sequence[Sample], limit: int | None) -> list[Sample]:
    """The first ``limit`` samples taken round-robin over categories (in first-seen order), so a
    small ``--limit`` still covers every category; order within a category is kept."""
    if limit is None or limit >= len(samples):
        return list(samples)
    if limit < 0:
        raise ValueError(f"--limit must be >= 0, got {limit}")
    by_category: dict[str, list[Sample]] = {}
    for s in samples:
        by_category.setdefault(s.category, []).append(s)
    picked: list[Sample] = []
    queues: list[Iterator[Sample]] = [iter(group) for group in by_category.values()]
    while len(picked) < limit:
        progressed = False
        for queue in queues:
            item = next(queue, None)
            if item is not None:
                picked.append(item)
                progressed = True
                if len(picked) == limit:
                    break
        if not progressed:
            break
    order = {s.id: i for i, s in enumerate(samples)}
    return sorted(picked, key=lambda s: order[s.id])
