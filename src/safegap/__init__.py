"""safegap: measure and close the modality gap that makes VLMs drop their safety with an image.

The API in three lines (objects in, objects out; strings work wherever a spec does)::

    import safegap
    vlm = safegap.load("llava-hf/llava-1.5-7b-hf", dtype="bfloat16", device="cuda")
    shift = safegap.calibrate(vlm, anchors, tune=safegap.Tune(harmful=h, benign=b))
    with shift.apply(vlm): out = vlm.generate(prompts, images)
    safegap.evaluate(vlm, benchmarks=["figstep"], defenses=[safegap.CMRM(shift)], judges=["refusal"])

- ``load(name_or_path, dtype=, device=)`` -> ``VLM`` (``vlm.generate(texts, images)``).
- ``calibrate(vlm, anchors, tune=Tune(harmful=, benign=))`` -> ``ShiftVector``: CMRM's per-layer
  shift, its alpha and form chosen on labelled prompts and kept as ``shift.tuning``;
  ``shift.save(path)`` / ``ShiftVector.load(path)``.
- ``shift.apply(vlm_or_hf_model)`` -> a handle (context manager, ``.remove()``), honouring the tuning.
- ``CMRM(shift)`` -> a defense for ``evaluate`` (applied exactly as ``shift.apply``).
- ``evaluate(vlm, benchmarks=, defenses=, judges=)`` -> ``EvalResult`` (``.summary``, ``.run_dir``).
- ``mir(vlm, records)`` -> ``GapResult``: the modality gap per layer (``.mir`` is the total).

Names load on first use, so ``import safegap`` stays light. Details: README.md and docs/.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: Public name -> module that defines it (imported on first access).
_API = {
    "CMRM": "safegap.api",
    "ShiftVector": "safegap.steer.vector",
    "Tune": "safegap.steer.sweep",
    "Tuning": "safegap.steer.vector",
    "VLM": "safegap.models.loading",
    "calibrate": "safegap.api",
    "evaluate": "safegap.api",
    "load": "safegap.api",
    "mir": "safegap.api",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'safegap' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
