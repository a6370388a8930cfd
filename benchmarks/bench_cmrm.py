"""CMRM cost, measured side by side in one process on a tiny LLaVA of realistic shape.

Model (random weights, built here): CLIP vision 128 x 2 layers, 224 px, patch 32 -> 49 image
tokens; Llama text 512 hidden x 8 layers, 8 heads, MLP 2048, vocabulary 8000 (42.9 M parameters,
the "large" model of ``/work/shared/research/perf-anchors.md``). Prompts: 8 rows, one 64x48 noise
image each, 2-12 words of text (so rows are left-padded). Greedy, exactly 32 new tokens.

Lines printed (one JSON object each):

* ``cmrm_dataset_overhead``: dataset-level steered ``generate`` (hooks attached and removed around
  every call, the default ``positions``) / unsteered; median over interleaved rounds of the
  per-round ratio, order alternating. Target <= 1.02. ``last_plus_decode_ratio``: the same with
  the hooks also correcting every decode step (``policy="last+decode"``).
* ``cmrm_sample_overhead``: sample-level CMRM end to end (inputs built inside every arm) /
  unsteered, for the default layout; every layout's ratio is reported beside it. Target <= 1.3.
* ``cmrm_calibration_throughput``: anchors per second of ``calibrate(batch_size=8)`` (shared
  corrupted prefix, the default) / a batch-1 loop; batch 8 without prefix sharing beside it.
  Higher is better; target >= 2.

``--rounds N`` sets the number of interleaved rounds (default 11); ``--threads`` the torch threads
(default 1: one thread gives stable CPU timings on a shared machine); ``--device``/``--dtype`` as
every benchmark (``benchcommon.py``; ratios are CPU-time ratios on CPU, wall-time ratios on CUDA).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchcommon import add_device_args, interleaved, machine, ratio_of, resolve  # noqa: E402

from safegap.data.images import noise_image  # noqa: E402
from safegap.models import VLM, load_vlm  # noqa: E402
from safegap.models.generation import generate_ids  # noqa: E402
from safegap.steer import calibrate, sample_level_ids  # noqa: E402
from safegap.steer.intervene import DEFAULT_POLICY  # noqa: E402
from safegap.steer.sample import DEFAULT_LAYOUT, LAYOUTS, Layout  # noqa: E402
from safegap.testing import build_family, llava_family  # noqa: E402

WORDS = [
    "how",
    "do",
    "i",
    "make",
    "a",
    "cake",
    "describe",
    "the",
    "image",
    "what",
    "is",
    "shown",
    "here",
    "tell",
    "me",
    "about",
    "the",
    "picture",
    "please",
]


def build_model(out_dir: Path) -> Path:
    """The LLaVA of the module docstring, random weights of seed 0."""
    text = dict(
        vocab_size=8000,
        hidden_size=512,
        intermediate_size=2048,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=8,
        head_dim=64,
        max_position_embeddings=1024,
    )
    vision = dict(hidden_size=128, intermediate_size=512, num_attention_heads=4, projection_dim=128)
    return build_family(llava_family(image_size=224, patch=32, vision=vision, text=text), out_dir)


def prompts(n: int, seed: int) -> tuple[list[str], list[Any]]:
    gen = torch.Generator().manual_seed(seed)
    texts = []
    for _ in range(n):
        k = int(torch.randint(2, 13, (1,), generator=gen))
        texts.append(" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (k,), generator=gen)))
    return texts, [noise_image((64, 48), seed=seed * 100 + i) for i in range(n)]


DEVICE = torch.device("cpu")


def paired(arms: dict[str, Callable[[], object]], base: str, rounds: int) -> dict[str, dict[str, Any]]:
    """Interleaved rounds (order reversed every other round) after one warm-up per arm; see
    ``benchcommon.interleaved``. ``ratio`` is the CPU-time ratio on CPU, wall time on CUDA."""
    res = interleaved(arms, base, rounds, DEVICE)
    for v in res.values():
        v["ratio"] = ratio_of(v, DEVICE)
    return res


def bench_dataset(vlm: VLM, rounds: int) -> dict[str, Any]:
    texts, images = prompts(8, seed=1)
    inputs = vlm.build_inputs(texts, images)
    shift = calibrate(vlm, list(zip(*prompts(8, seed=2), strict=True)), diagnostics=False)
    base = generate_ids(vlm, inputs, 32, min_new_tokens=32)

    def steered(positions: str) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            with shift.apply(vlm, alpha=1.0, policy=positions):
                return generate_ids(vlm, inputs, 32, min_new_tokens=32)

        return run

    assert not torch.equal(steered(DEFAULT_POLICY)(), base), "the shift should change the output"
    res = paired(
        {
            "none": lambda: generate_ids(vlm, inputs, 32, min_new_tokens=32),
            "steered": steered(DEFAULT_POLICY),
            # the policy that runs the hooks on every decode step as well (the old default)
            "every_step": steered("last+decode"),
        },
        "none",
        rounds,
    )
    # attach + detach alone
    start = time.perf_counter()
    for _ in range(200):
        shift.apply(vlm).remove()
    attach_ms = (time.perf_counter() - start) / 200 * 1e3
    return {
        "benchmark": "cmrm_dataset_overhead",
        "ratio": round(res["steered"]["ratio"], 4),
        "target": 1.02,
        "better": "lower",
        "ratio_basis": "median per-round time ratio steered/unsteered (CPU time; wall on CUDA)",
        "wall_ratio": round(res["steered"]["wall_ratio"], 4),
        "ratio_iqr": [round(x, 4) for x in res["steered"]["cpu_ratio_iqr"]],
        "unsteered_wall_s": round(res["none"]["wall_s"], 4),
        "steered_wall_s": round(res["steered"]["wall_s"], 4),
        "attach_detach_ms": round(attach_ms, 4),
        "policy": DEFAULT_POLICY,
        "last_plus_decode_ratio": round(res["every_step"]["ratio"], 4),
        "layers": vlm.adapter.num_layers,
        "batch": 8,
        "new_tokens": 32,
        "rounds": rounds,
    }


def bench_sample(vlm: VLM, rounds: int) -> dict[str, Any]:
    texts, images = prompts(8, seed=3)

    def run(layout: str) -> Callable[[], torch.Tensor]:
        chosen = cast(Layout, layout)
        return lambda: sample_level_ids(
            vlm, texts, images, max_new_tokens=32, min_new_tokens=32, layout=chosen
        )

    outputs = {layout: run(layout)() for layout in LAYOUTS}

    def unsteered() -> torch.Tensor:  # end to end like the sample arms: inputs are built inside
        return generate_ids(vlm, vlm.build_inputs(texts, images), 32, min_new_tokens=32)

    arms: dict[str, Callable[[], object]] = {"none": unsteered}
    arms.update({layout: run(layout) for layout in LAYOUTS})
    res = paired(arms, "none", rounds)
    return {
        "benchmark": "cmrm_sample_overhead",
        "ratio": round(res[DEFAULT_LAYOUT]["ratio"], 4),
        "target": 1.3,
        "better": "lower",
        "layout": DEFAULT_LAYOUT,
        "ratio_basis": "median per-round time ratio sample-level (default layout)/unsteered (CPU; wall on CUDA)",
        "wall_ratio": round(res[DEFAULT_LAYOUT]["wall_ratio"], 4),
        "ratio_iqr": [round(x, 4) for x in res[DEFAULT_LAYOUT]["cpu_ratio_iqr"]],
        "layout_ratios": {layout: round(res[layout]["ratio"], 4) for layout in LAYOUTS},
        "layouts_agree_with_separate": all(torch.equal(outputs[k], outputs["separate"]) for k in LAYOUTS),
        "unsteered_wall_s": round(res["none"]["wall_s"], 4),
        "layout_wall_s": {layout: round(res[layout]["wall_s"], 4) for layout in LAYOUTS},
        "batch": 8,
        "new_tokens": 32,
        "rounds": rounds,
    }


def bench_calibration(vlm: VLM, rounds: int) -> dict[str, Any]:
    anchors = list(zip(*prompts(24, seed=4), strict=True))
    res = paired(
        {
            "batch1": lambda: calibrate(vlm, anchors, batch_size=1, diagnostics=False),
            "batch8_plain": lambda: calibrate(
                vlm, anchors, batch_size=8, diagnostics=False, share_prefix=False
            ),
            "batch8": lambda: calibrate(vlm, anchors, batch_size=8, diagnostics=False),
        },
        "batch1",
        max(3, rounds // 3),
    )
    return {
        "benchmark": "cmrm_calibration_throughput",
        "ratio": round(1 / res["batch8"]["ratio"], 4),
        "target": 2.0,
        "better": "higher",
        "ratio_basis": "anchors/s of calibrate(batch_size=8) over a batch-1 loop (median per-round CPU-time ratio)",
        "ratio_without_shared_prefix": round(1 / res["batch8_plain"]["ratio"], 4),
        "anchors_per_s_batch8": round(len(anchors) / res["batch8"]["wall_s"], 2),
        "anchors_per_s_batch1": round(len(anchors) / res["batch1"]["wall_s"], 2),
        "wall_speedup": round(1 / res["batch8"]["wall_ratio"], 4),
        "anchors": len(anchors),
        "rounds": max(3, rounds // 3),
    }


def main() -> None:
    global DEVICE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_device_args(parser)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", choices=["dataset", "sample", "calibration"], default=None)
    args = parser.parse_args()
    DEVICE, dtype = resolve(args)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        vlm = load_vlm(build_model(Path(tmp)), dtype=dtype, device=DEVICE)
        device = machine(DEVICE, dtype, args.threads)
        benches = {"dataset": bench_dataset, "sample": bench_sample, "calibration": bench_calibration}
        for name, bench in benches.items():
            if args.only in (None, name):
                print(json.dumps({**bench(vlm, args.rounds), **device}), flush=True)


if __name__ == "__main__":
    main()
