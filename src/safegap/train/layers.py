"""Layer sets for the regularisers: a layer range (``"4-7"``, ``"2,4-6"``, ``"all"``, negatives from
the model's last layer; the grammar of :mod:`safegap.specs`) or the JSON of ``safegap layers``.

Indices are decoder-layer indices from 0 (the output of decoder layer ``i``), as everywhere in
safegap. The safety-band JSON written by ``safegap layers`` (``safegap.gap``) is read tolerantly:
a ``safety_band`` entry given as ``[first, last]`` (inclusive), ``{"start": .., "end": ..}``
(inclusive) or ``{"layers": [..]}``, or a top-level ``layers`` list.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from safegap.specs import resolve_layers


def _band_layers(band: Any, origin: str) -> list[int]:
    if isinstance(band, dict):
        if "layers" in band:
            return [int(x) for x in band["layers"]]
        for lo_key, hi_key in (("start", "end"), ("first", "last"), ("lo", "hi")):
            if lo_key in band and hi_key in band:
                return list(range(int(band[lo_key]), int(band[hi_key]) + 1))
    if isinstance(band, list | tuple) and len(band) == 2 and all(isinstance(x, int) for x in band):
        return list(range(band[0], band[1] + 1))
    raise ValueError(f"{origin}: cannot read a layer band from {band!r}")


def layers_from_json(path: str | Path, num_layers: int) -> list[int]:
    """The safety band stored in a ``safegap layers`` JSON file."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if isinstance(data, dict) and "safety_band" in data:
        layers = _band_layers(data["safety_band"], str(p))
    elif isinstance(data, dict) and "layers" in data:
        layers = _band_layers({"layers": data["layers"]}, str(p))
    else:
        raise ValueError(f"{p}: no 'safety_band' or 'layers' entry; pass explicit layers like '4-7'")
    return resolve_layers(layers, num_layers, str(p))


def resolve_layer_spec(spec: str | Sequence[int], num_layers: int) -> list[int]:
    """A range string, a path to a layers JSON, or explicit indices."""
    if not isinstance(spec, str):
        return resolve_layers(list(spec), num_layers)
    if spec.endswith(".json") or Path(spec).is_file():
        if not Path(spec).is_file():
            raise FileNotFoundError(f"layers file {spec} does not exist")
        return layers_from_json(spec, num_layers)
    return resolve_layers(spec, num_layers)
