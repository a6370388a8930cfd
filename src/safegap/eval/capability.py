"""A capability benchmark as a tuning set: :func:`capability_check` turns a benchmark spec
(``organism_vqa:n=1``, ``pope``, ...) into the :class:`~safegap.steer.sweep.CapabilityCheck`
CMRM's tuning scores at every alpha, so the tuning can bound capability loss as the frontier does.

The items are the benchmark's samples under its default conditions (a capability benchmark's
own: ``image``), each scored by the benchmark's scorer (:mod:`safegap.eval.scoring`) with the
options a run would use; errored samples are left out, ``limit`` takes the first N round-robin
over categories as ``--limit`` does.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from safegap.data.benchmarks import DataContext, load_benchmark, resolve_data_dir
from safegap.data.benchmarks import limit_samples as take
from safegap.data.benchmarks.base import Benchmark, Sample
from safegap.data.benchmarks.capability import declared_metric
from safegap.errors import UserError
from safegap.eval.scoring import SCORERS
from safegap.eval.scoring.records import scoring_options
from safegap.steer.sweep import CapabilityCheck, CapabilityItem


def capability_check(
    spec: str | Benchmark,
    limit: int | None = None,
    data_dir: str | Path | None = None,
    model_path: str | None = None,
) -> CapabilityCheck:
    """The tuning set of a capability benchmark (module docstring). A benchmark that declares
    no capability scorer (a safety set, MOSSBench's over-refusal) is refused in one line."""
    bench = (
        spec
        if isinstance(spec, Benchmark)
        else load_benchmark(spec, DataContext(data_dir=resolve_data_dir(data_dir), model_path=model_path))
    )
    metric = declared_metric(bench)
    scorer = SCORERS.get(metric or "")
    if scorer is None:
        what = f"its metric {metric!r} is" if metric else "it is a safety benchmark,"
        raise UserError(
            f"capability set {bench.id!r}: {what} not a capability scorer ({', '.join(sorted(SCORERS))})"
        )
    samples = take([s for s in bench.samples() if s.error is None and s.answers], limit)
    if not samples:
        raise UserError(f"capability set {bench.id!r}: no sample with a reference answer")
    options = scoring_options(bench)

    def scorer_of(sample: Sample) -> Callable[[str], float]:
        return lambda reply: scorer.value(sample, reply, options)

    items = []
    for condition in bench.default_conditions():
        bench.check_condition(condition)
        for sample in samples:
            if not bench.offers(sample, condition):
                continue
            request = bench.request(sample, condition)
            image = None if request.image is None else bench.load_image(request.image, sample)
            items.append(CapabilityItem(request.prompt, image, condition, scorer_of(sample)))
    return CapabilityCheck(bench.id, scorer.name, items, scorer.chance(samples, scorer.primary))
