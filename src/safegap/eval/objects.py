"""Objects as well as spec strings in :class:`~safegap.eval.runner.EvalConfig`.

A benchmark, defense or judge given as an object (``safegap.CMRM(shift)``, a ``Judge``, a
``Benchmark``) is named in the run by its ``id`` (a CMRM shift held in memory by a digest of its
tensors and tuning, :func:`safegap.eval.cmrm.shift_digest`), and that name stands in the run's
config, results and resume checks exactly as a spec string does; the object itself is kept beside
the config and used where the runner would build one from a spec.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from safegap.data.benchmarks import Benchmark, DataContext, load_benchmark
from safegap.eval.defenses import Defense
from safegap.eval.wrappers import build_defense
from safegap.judge.base import Judge, make_judge
from safegap.models.loading import VLM


def split_objects(kind: str, items: Sequence[Any], objects: dict[str, Any]) -> list[str]:
    """The spec strings for ``items``; every object is put in ``objects`` under its ``id``."""
    out = []
    for item in items:
        if isinstance(item, str):
            out.append(item)
            continue
        name = getattr(item, "id", None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"{kind} {item!r}: an object needs a non-empty string id (or give a spec string)")
        if name in objects and objects[name] is not item:
            raise ValueError(f"two different {kind} objects share the id {name!r}")
        objects[name] = item
        out.append(name)
    return out


def benchmark(spec: str, context: DataContext, objects: dict[str, Any]) -> Benchmark:
    found = objects.get(spec)
    return found if found is not None else load_benchmark(spec, context)  # type: ignore[no-any-return]


def defense(spec: str, vlm: VLM, objects: dict[str, Any]) -> Defense:
    found = objects.get(spec)
    return found if found is not None else build_defense(spec, vlm)  # type: ignore[no-any-return]


def judge(spec: str, objects: dict[str, Any]) -> Judge:
    found = objects.get(spec)
    return found if found is not None else make_judge(spec)  # type: ignore[no-any-return]
