"""safegap's dataset-level steering against the peer library steering-vectors, side by side.

Model: the tiny LLaVA of ``bench_cmrm.py`` (CLIP 128 x 2, Llama 512 x 8, 42.9 M parameters).
Vectors: one CMRM shift calibrated on 8 anchors. Both libraries add the same vector to every
decoder layer's output at every position of every row (safegap: ``policy="all"``,
``rows="all"``, its add operator h + alpha v; steering-vectors 0.12.2: ``SteeringVector.apply``
with the explicit layer template), around the same greedy ``generate`` of 32 new
tokens for 8 prompts; the generated tokens are checked identical before timing.

Prints one JSON line, ``steer_vs_steering_vectors``: ratio = safegap time / steering-vectors time
(median of per-round ratios over ``--rounds`` interleaved rounds, CPU time on CPU, wall time on
CUDA), target <= 1.02. steering-vectors is an optional bench dependency (``pip install -e
".[bench]"``, installed without its ``transformers<5`` pin); without it the line says skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench_cmrm import build_model, prompts  # noqa: E402
from benchcommon import add_device_args, interleaved, machine, ratio_of, resolve  # noqa: E402

from safegap.models import load_vlm  # noqa: E402
from safegap.models.generation import generate_ids  # noqa: E402
from safegap.steer import calibrate  # noqa: E402

LAYER_TEMPLATE = "model.language_model.layers.{num}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_device_args(parser)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    device, dtype = resolve(args)
    torch.set_num_threads(args.threads)
    info = machine(device, dtype, args.threads)
    try:
        from steering_vectors import SteeringVector
    except ImportError as error:
        print(
            json.dumps(
                {
                    "benchmark": "steer_vs_steering_vectors",
                    "skipped": f"steering-vectors is not installed ({error}); pip install -e '.[bench]'",
                    "target": 1.02,
                    **info,
                }
            )
        )
        return
    with tempfile.TemporaryDirectory() as tmp:
        vlm = load_vlm(build_model(Path(tmp)), dtype=dtype, device=device)
        texts, images = prompts(8, seed=1)
        inputs = vlm.build_inputs(texts, images)
        shift = calibrate(vlm, list(zip(*prompts(8, seed=2), strict=True)), diagnostics=False)
        peer = SteeringVector(
            layer_activations={i: v.to(device, dtype) for i, v in shift.vectors.items()},
            layer_type="decoder_block",
        )

        def run_none() -> torch.Tensor:
            return generate_ids(vlm, inputs, 32, min_new_tokens=32)

        def run_safegap() -> torch.Tensor:
            with shift.apply(vlm, alpha=1.0, policy="all", rows="all"):
                return generate_ids(vlm, inputs, 32, min_new_tokens=32)

        def run_peer() -> torch.Tensor:
            with peer.apply(vlm.model, layer_config={"decoder_block": LAYER_TEMPLATE}):
                return generate_ids(vlm, inputs, 32, min_new_tokens=32)

        ours, theirs, plain = run_safegap(), run_peer(), run_none()
        identical = bool(torch.equal(ours, theirs))
        res = interleaved(
            {"none": run_none, "safegap": run_safegap, "steering_vectors": run_peer},
            "steering_vectors",
            args.rounds,
            device,
        )
        ratio = ratio_of(res["safegap"], device)
        none = ratio_of(res["none"], device)
        out: dict[str, Any] = {
            "benchmark": "steer_vs_steering_vectors",
            "ratio": round(ratio, 4),
            "target": 1.02,
            "better": "lower",
            "ratio_basis": "median per-round time ratio safegap / steering-vectors",
            "safegap_over_none": round(ratio / none, 4),
            "steering_vectors_over_none": round(1 / none, 4),
            "tokens_identical": identical,
            "steering_changes_tokens": not bool(torch.equal(ours, plain)),
            "wall_s": {k: round(v["wall_s"], 4) for k, v in res.items()},
            "layers": len(shift.vectors),
            "batch": 8,
            "new_tokens": 32,
            "rounds": args.rounds,
            **info,
        }
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
