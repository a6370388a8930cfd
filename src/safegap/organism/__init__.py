"""The model organism: a tiny LLaVA trained here, on the CPU, that loses its safety alignment
when an image is present. See ``docs/organism.md``.

Entry points: :func:`build_organism` (one checkpoint), :func:`run_study` (seeds x conditions),
:class:`World` (the prompts), :data:`VARIANTS` / :data:`ORGANISM_DEFENSES` (plug-ins).
Imports are lazy so ``import safegap.organism`` stays cheap.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "build_organism": "safegap.organism.build",
    "BuildReport": "safegap.organism.build",
    "OrganismConfig": "safegap.organism.config",
    "World": "safegap.organism.world",
    "run_study": "safegap.organism.study",
    "StudyOptions": "safegap.organism.study",
    "Variant": "safegap.organism.study",
    "VARIANTS": "safegap.organism.study",
    "ORGANISM_DEFENSES": "safegap.organism.study",
    "CalibrationData": "safegap.organism.study",
    "calibration_data": "safegap.organism.study",
    "calibration_anchors": "safegap.organism.anchors",
    "CONDITIONS": "safegap.organism.evaluate",
    "gap_records": "safegap.organism.diagnostics",
    "DiagnoseOptions": "safegap.organism.diagnostics",
    "diagnose_organisms": "safegap.organism.diagnostics",
    "measure_checkpoint": "safegap.organism.diagnostics",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'safegap.organism' has no attribute {name!r}")
