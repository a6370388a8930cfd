"""Streaming modality-gap (MIR) memory and throughput against a direct computation that stores
every token (what the official Modality-Integration-Rate code does), side by side in one run.

States: synthetic and LLaVA-shaped, generated chunk by chunk from per-chunk seeds, so every
process sees the same stream: ``--samples`` (default 24) samples of 576 image tokens and 40-80
text tokens, ``--layers`` 4, hidden ``--dim`` 512, chunks of 4 samples (a collection batch).
Per layer the norms grow with depth, the modality means differ, and 2 image tokens per sample
and 1 text token in every 4th carry "massive activations" (norm x25), so the 3-sigma outlier
step replaces tokens in both modalities.

Each (method, scale) runs in a fresh worker process with one torch thread. The streaming side is
``stream_gap`` in its default one-pass mode; ``exact`` (three passes) is timed once beside it.
The direct side stores every layer's tokens and runs ``mir_layer_direct`` (float64, exact
medians, the eigen-based accurate Fréchet distance). Generation time is measured and left out.

Prints two JSON lines:

* ``gap_streaming_memory``: streaming peak at 10x tokens / at 1x (target <= 1.2; flat in the
  token count); the direct computation's ratio beside it. Peak = growth of the peak resident set
  over the resident set after imports, with ``MALLOC_MMAP_THRESHOLD_`` set so the resident set
  tracks live memory. Not measured on CUDA (host memory does not mean anything there).
* ``gap_streaming_throughput``: streaming tokens/s over direct tokens/s at 1x, median of the
  per-round ratios over ``--rounds`` interleaved rounds (target >= 1.7), with the per-layer
  agreement of the streaming Fréchet distances with the direct (accurate) ones (target 1e-4).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator

IMAGE_TOKENS = 576  # per sample
TEXT_TOKENS = (40, 80)  # per sample, inclusive range
SAMPLES_PER_CHUNK = 4


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def worker(args: argparse.Namespace) -> dict[str, object]:
    import torch
    from benchcommon import resolve, sync

    from safegap.gap.metrics import mir_layer_direct, mir_total
    from safegap.gap.streaming import TokenBatch, stream_gap

    torch.set_num_threads(1)
    device, dtype = resolve(args)
    dim, layers = args.dim, args.layers
    samples = args.samples * args.scale
    generation = [0.0]
    # fixed per-layer structure: a mean gap that shrinks with depth, an anisotropic spectrum
    g0 = torch.Generator().manual_seed(7)
    spectrum = (torch.arange(1, dim + 1, dtype=torch.float32) ** -0.5).to(device)
    gap_dir = torch.randn(layers, dim, generator=g0).to(device)

    def text_lengths(index: int) -> torch.Tensor:  # the same tokens at every layer
        g = torch.Generator().manual_seed(17 + index)
        return torch.randint(TEXT_TOKENS[0], TEXT_TOKENS[1] + 1, (SAMPLES_PER_CHUNK,), generator=g)

    def chunk(layer: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(1_000_003 * layer + index)
        n_img, n_txt = IMAGE_TOKENS * SAMPLES_PER_CHUNK, int(text_lengths(index).sum())
        depth = 1.0 + layer
        image = torch.randn(n_img, dim, generator=g).to(device) * spectrum * depth + 0.3 * gap_dir[layer]
        text = torch.randn(n_txt, dim, generator=g).to(device) * spectrum * (0.7 * depth)
        image[::288] *= 25  # 2 massive-activation image tokens per sample
        text[n_txt // 2] *= 25  # 1 massive text token per chunk (every 4th sample)
        return image.to(dtype), text.to(dtype)

    def source() -> Iterator[TokenBatch]:
        for index in range(samples // SAMPLES_PER_CHUNK):
            sync(device)
            start = time.perf_counter()
            pairs = [chunk(layer, index) for layer in range(layers)]
            sync(device)
            generation[0] += time.perf_counter() - start
            yield TokenBatch({i: p[0] for i, p in enumerate(pairs)}, {i: p[1] for i, p in enumerate(pairs)})

    baseline = _rss_bytes()
    sync(device)
    start = time.perf_counter()
    passes = 1
    if args.worker in ("streaming", "exact"):
        mode = "fast" if args.worker == "streaming" else "exact"
        result = stream_gap(source, list(range(layers)), dim, device=device, mode=mode)
        per_layer, mir, passes = result.mir_per_layer, result.mir, result.passes
    else:
        stored_image: list[list[torch.Tensor]] = [[] for _ in range(layers)]
        stored_text: list[list[torch.Tensor]] = [[] for _ in range(layers)]
        for batch in source():
            for layer in range(layers):
                stored_image[layer].append(batch.image[layer])
                stored_text[layer].append(batch.text[layer])
        image_layers = [torch.cat(parts) for parts in stored_image]
        text_layers = [torch.cat(parts) for parts in stored_text]
        del stored_image, stored_text
        per_layer = [mir_layer_direct(i, t).total for i, t in zip(image_layers, text_layers, strict=True)]
        mir = mir_total(per_layer)
    sync(device)
    elapsed = time.perf_counter() - start
    chunks = samples // SAMPLES_PER_CHUNK
    tokens = sum(IMAGE_TOKENS * SAMPLES_PER_CHUNK + int(text_lengths(i).sum()) for i in range(chunks))
    return {
        "method": args.worker,
        "scale": args.scale,
        "tokens": tokens * layers,
        "peak_growth_bytes": _peak_bytes() - baseline,
        "seconds": elapsed,
        "generation_seconds": generation[0],
        "tokens_per_second": tokens * layers / (elapsed - generation[0]),
        "mir": mir,
        "passes": passes,
        "per_layer": per_layer,
    }


def run_worker(args: argparse.Namespace, method: str, scale: int, exact_memory: bool) -> dict[str, object]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if exact_memory:
        env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    command = [sys.executable, __file__, "--worker", method, "--scale", str(scale)]
    for name in ("device", "dtype", "dim", "layers", "samples"):
        command += [f"--{name}", str(getattr(args, name))]
    out = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def rel_diff(a: object, b: object) -> float:
    return max(abs(x - y) / abs(y) for x, y in zip(a, b, strict=True))  # type: ignore[call-overload]


def main() -> None:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from benchcommon import add_device_args, machine, resolve

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_device_args(parser)
    parser.add_argument("--worker", choices=["streaming", "exact", "direct"])
    parser.add_argument("--scale", type=int, default=1)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--samples", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-memory", action="store_true", help="throughput only (large shapes)")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    device, dtype = resolve(args)
    shape = {"layers": args.layers, "hidden": args.dim, "samples_1x": args.samples}
    info = machine(device, dtype, threads=1)
    if args.skip_memory:
        pass
    elif device.type != "cuda":
        runs = {
            (m, s): run_worker(args, m, s, exact_memory=True)
            for m in ("streaming", "direct")
            for s in (1, 10)
        }
        mb = {f"{m}_{s}x": round(float(r["peak_growth_bytes"]) / 2**20, 1) for (m, s), r in runs.items()}  # type: ignore[arg-type]

        def growth(method: str) -> float:
            return float(runs[(method, 10)]["peak_growth_bytes"]) / float(
                runs[(method, 1)]["peak_growth_bytes"]
            )  # type: ignore[arg-type]

        memory = {
            "benchmark": "gap_streaming_memory",
            "ratio": round(growth("streaming"), 3),
            "target": 1.2,
            "better": "lower",
            "direct_ratio": round(growth("direct"), 3),
            "peak_growth_mb": mb,
            "max_rel_diff_per_layer_fd_10x": rel_diff(
                runs[("streaming", 10)]["per_layer"], runs[("direct", 10)]["per_layer"]
            ),
            "tokens_1x": runs[("streaming", 1)]["tokens"],
            "tokens_10x": runs[("streaming", 10)]["tokens"],
        }
        print(json.dumps({**memory, **shape, **info}), flush=True)
    else:
        print(
            json.dumps(
                {"benchmark": "gap_streaming_memory", "skipped": "host memory accounting is CPU-only", **info}
            )
        )
    rounds: dict[str, list[dict[str, object]]] = {"streaming": [], "direct": []}
    for r in range(args.rounds):
        for method in ("streaming", "direct") if r % 2 == 0 else ("direct", "streaming"):
            rounds[method].append(run_worker(args, method, 1, exact_memory=False))
    exact = run_worker(args, "exact", 1, exact_memory=False)
    per_round = [
        float(s["tokens_per_second"]) / float(d["tokens_per_second"])  # type: ignore[arg-type]
        for s, d in zip(rounds["streaming"], rounds["direct"], strict=True)
    ]
    direct_rates = [float(d["tokens_per_second"]) for d in rounds["direct"]]  # type: ignore[arg-type]
    stream, direct = rounds["streaming"][0], rounds["direct"][0]
    result = {
        "benchmark": "gap_streaming_throughput",
        "ratio": round(statistics.median(per_round), 3),
        "target": 1.7,
        "better": "higher",
        "ratio_per_round": [round(x, 3) for x in per_round],
        "tokens_per_second": {
            "streaming": round(statistics.median(float(s["tokens_per_second"]) for s in rounds["streaming"])),  # type: ignore[arg-type]
            "direct": round(statistics.median(direct_rates)),
            "exact_mode": round(float(exact["tokens_per_second"])),  # type: ignore[arg-type]
        },
        "exact_mode_ratio": round(float(exact["tokens_per_second"]) / statistics.median(direct_rates), 3),  # type: ignore[arg-type]
        "passes": {"streaming": stream["passes"], "exact_mode": exact["passes"]},
        "max_rel_diff_per_layer_fd": rel_diff(stream["per_layer"], direct["per_layer"]),
        "mir_abs_diff": abs(float(stream["mir"]) - float(direct["mir"])),  # type: ignore[arg-type]
        "exact_mode_max_rel_diff_per_layer_fd": rel_diff(exact["per_layer"], direct["per_layer"]),
        "agreement_target": 1e-4,
        "unit": "token states (tokens x layers) per second; generation time excluded",
        "rounds": args.rounds,
        "tokens": stream["tokens"],
    }
    print(json.dumps({**result, **shape, **info}), flush=True)


if __name__ == "__main__":
    main()
