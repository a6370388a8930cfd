"""Diagnostics: the modality gap per layer (MIR, centroid, matched pairs, probe), safety-layer
localisation and semantic shift (TGA), CMRM's five conditions, and gap/unsafe-rate correlation.

Definitions, output schemas and deviations from the papers: docs/diagnostics.md.
``run_gap``, ``run_layers`` and ``run_correlate`` (from :mod:`safegap.gap.report`) compute, write
JSON and figures in one call; the functions below are the pieces.
"""

from __future__ import annotations

from typing import Any

from safegap.gap.collect import (
    image_text_spans,
    iter_token_batches,
    last_token_states,
    measure_gap,
    pooled_states,
    substring_text_spans,
)
from safegap.gap.data import GapRecord, load_record_file, register_data_source, resolve_data
from safegap.gap.layers import (
    DEFAULT_REFUSAL_PHRASES,
    layer_skip_refusal,
    localise_safety_layers,
    output_refusal,
    refusal_lens,
    refusal_token_ids,
    skipped_layers,
)
from safegap.gap.metrics import (
    centroid_gap,
    frechet_distance,
    linear_probe,
    mir_direct,
    paired_gap,
    trace_sqrt_product,
)
from safegap.gap.moments import Moments
from safegap.gap.shift import five_conditions, semantic_shift
from safegap.gap.streaming import GapAccumulator, GapResult, TokenBatch, stream_gap

_LAZY = {
    "run_gap": "safegap.gap.report",
    "run_layers": "safegap.gap.report",
    "run_correlate": "safegap.gap.report",
    "correlate": "safegap.gap.correlate",
    "load_point": "safegap.gap.correlate",
}


def __getattr__(name: str) -> Any:
    """Matplotlib and scipy.stats load only when the report or correlation functions are used."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'safegap.gap' has no attribute {name!r}")


__all__ = [
    "DEFAULT_REFUSAL_PHRASES",
    "GapAccumulator",
    "GapRecord",
    "GapResult",
    "Moments",
    "TokenBatch",
    "centroid_gap",
    "correlate",
    "five_conditions",
    "frechet_distance",
    "image_text_spans",
    "iter_token_batches",
    "last_token_states",
    "layer_skip_refusal",
    "linear_probe",
    "load_point",
    "load_record_file",
    "localise_safety_layers",
    "measure_gap",
    "mir_direct",
    "output_refusal",
    "paired_gap",
    "pooled_states",
    "refusal_lens",
    "refusal_token_ids",
    "register_data_source",
    "resolve_data",
    "run_correlate",
    "run_gap",
    "run_layers",
    "semantic_shift",
    "skipped_layers",
    "stream_gap",
    "substring_text_spans",
    "trace_sqrt_product",
]
