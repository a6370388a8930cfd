"""Streaming modality-gap (MIR) memory and throughput against a direct computation that stores
every token, at 1x and 10x tokens, side by side in one run.

Each (method, scale) runs in a fresh worker process, one torch thread; peak memory is the growth
of the process's peak resident set (``ru_maxrss``) over its resident set after imports, so the
interpreter and torch are not counted. Memory runs set ``MALLOC_MMAP_THRESHOLD_`` so glibc hands
large blocks back at once and the resident set tracks live memory (with the default, heap
fragmentation adds +-15% noise run to run); that slows allocation, so throughput comes from
separate runs with the default allocator. Synthetic LLaVA-like hidden states are generated chunk by
chunk from per-chunk seeds (the streaming path reads the same stream three times; the direct path
keeps it). Generation time is measured and left out of the throughput.

Prints two JSON lines: ``gap_streaming_memory`` (ratio = streaming peak at 10x / at 1x; the
direct computation's ratio beside it) and ``gap_streaming_throughput`` (ratio = streaming tokens
per second / direct tokens per second at 1x; target: at least half, although it reads the tokens
three times).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterator

LAYERS = 4
DIM = 256
SAMPLES_1X = 20
IMAGE_TOKENS = 400  # per sample
TEXT_TOKENS = 100  # per sample
SAMPLES_PER_CHUNK = 4


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def worker(method: str, scale: int) -> dict[str, object]:
    import torch

    from safegap.gap.metrics import mir_layer_direct, mir_total
    from safegap.gap.streaming import TokenBatch, stream_gap

    torch.set_num_threads(1)
    samples = SAMPLES_1X * scale
    generation = [0.0]

    def chunk(layer: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(1_000_003 * layer + index)
        n_img, n_txt = IMAGE_TOKENS * SAMPLES_PER_CHUNK, TEXT_TOKENS * SAMPLES_PER_CHUNK
        depth = 1 + layer
        image = torch.randn(n_img, DIM, generator=g) * depth + 2.0 / depth
        text = torch.randn(n_txt, DIM, generator=g) * (0.5 * depth)
        image[::200] *= 20  # a few "massive activation" tokens exercise the outlier step
        text[::150] *= 15
        return image, text

    def source() -> Iterator[TokenBatch]:
        for index in range(samples // SAMPLES_PER_CHUNK):
            start = time.perf_counter()
            pairs = [chunk(layer, index) for layer in range(LAYERS)]
            generation[0] += time.perf_counter() - start
            yield TokenBatch({i: p[0] for i, p in enumerate(pairs)}, {i: p[1] for i, p in enumerate(pairs)})

    baseline = _rss_bytes()
    start = time.perf_counter()
    if method == "streaming":
        result = stream_gap(source, list(range(LAYERS)), DIM)
        per_layer, mir = result.per_layer("fd"), result.mir
    else:
        stored_image: list[list[torch.Tensor]] = [[] for _ in range(LAYERS)]
        stored_text: list[list[torch.Tensor]] = [[] for _ in range(LAYERS)]
        for batch in source():
            for layer in range(LAYERS):
                stored_image[layer].append(batch.image[layer])
                stored_text[layer].append(batch.text[layer])
        image_layers = [torch.cat(parts) for parts in stored_image]
        text_layers = [torch.cat(parts) for parts in stored_text]
        del stored_image, stored_text
        per_layer = [mir_layer_direct(i, t).total for i, t in zip(image_layers, text_layers, strict=True)]
        mir = mir_total(per_layer)
    elapsed = time.perf_counter() - start
    tokens = samples * (IMAGE_TOKENS + TEXT_TOKENS) * LAYERS
    compute = elapsed - generation[0]
    return {
        "method": method,
        "scale": scale,
        "tokens": tokens,
        "peak_growth_bytes": _peak_bytes() - baseline,
        "seconds": elapsed,
        "generation_seconds": generation[0],
        "tokens_per_second": tokens / compute,
        "mir": mir,
        "per_layer": per_layer,
    }


def run_worker(method: str, scale: int, exact_memory: bool) -> dict[str, object]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if exact_memory:
        env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    out = subprocess.run(
        [sys.executable, __file__, "--worker", method, "--scale", str(scale)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", choices=["streaming", "direct"])
    parser.add_argument("--scale", type=int, default=1)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.scale)))
        return
    runs = {(m, s): run_worker(m, s, exact_memory=True) for m in ("streaming", "direct") for s in (1, 10)}
    speed_runs = {m: run_worker(m, 1, exact_memory=False) for m in ("streaming", "direct")}
    mb = {f"{m}_{s}x": round(float(r["peak_growth_bytes"]) / 2**20, 1) for (m, s), r in runs.items()}  # type: ignore[arg-type]

    def ratio(method: str) -> float:
        return float(runs[(method, 10)]["peak_growth_bytes"]) / float(runs[(method, 1)]["peak_growth_bytes"])  # type: ignore[arg-type]

    agreement = max(
        abs(a - b) / abs(b)
        for s in (1, 10)
        for a, b in zip(runs[("streaming", s)]["per_layer"], runs[("direct", s)]["per_layer"], strict=True)  # type: ignore[call-overload]
    )
    shape = {
        "layers": LAYERS,
        "hidden": DIM,
        "tokens_1x": runs[("streaming", 1)]["tokens"],
        "tokens_10x": runs[("streaming", 10)]["tokens"],
    }
    print(
        json.dumps(
            {
                "benchmark": "gap_streaming_memory",
                "ratio": round(ratio("streaming"), 3),
                "target": 1.2,
                "direct_ratio": round(ratio("direct"), 3),
                "peak_growth_mb": mb,
                "max_rel_diff_per_layer_fd": agreement,
                **shape,
            }
        )
    )
    speed = {m: round(float(r["tokens_per_second"])) for m, r in speed_runs.items()}  # type: ignore[arg-type]
    print(
        json.dumps(
            {
                "benchmark": "gap_streaming_throughput",
                "ratio": round(speed["streaming"] / speed["direct"], 3),
                "target": 0.5,
                "tokens_per_second": speed,
                "unit": "token states (tokens x layers) per second",
                "passes": 3,
                "note": "streaming reads the tokens three times (exact outlier medians); generation time excluded",
                **shape,
            }
        )
    )


if __name__ == "__main__":
    main()
