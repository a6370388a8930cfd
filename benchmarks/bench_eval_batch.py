"""Evaluation throughput: the harness at batch 16 vs a batch-1 loop, side by side in one process.

Both arms run the real harness (``safegap.eval.runner.run_eval``: images, left-padded batched
greedy generation, the refusal judge, fsync'ed JSONL writes, the summary) on the same requests
(``--samples``, default 256: sixteen batches, so the steady state of a run and not its fixed
start-up and summary costs, about 50 ms; 2-14 words of text each, one noise image each), at most 32 new tokens, in interleaved
rounds. The ratio is batch-1 seconds over batch-16 seconds within a round (= samples per second at
batch 16 over samples per second at batch 1), median over rounds; pairing by round cancels the
drifts of a shared machine. Target >= 3.5 on the organism.

Why 3.5 and not the 5x perf-anchors measured for bare ``generate`` on a 9 M-parameter LLaVA: the
organism has about 1 M parameters, so a request's preprocessing (image resize and normalisation,
tokenisation) costs about as much as its share of a batch-16 generate. Batching cannot beat the
time batch 16 still spends building its inputs: ``preprocess_ceiling`` (batch-1 bare seconds /
batch-16 preprocessing seconds) is that Amdahl bound, measured in the same rounds (near 4 on 2
cores; see docs/evaluation.md).

Model: the organism (``--model PATH``, ``$SAFEGAP_ORGANISM``, the current configuration's seed-0
build in the safegap organism cache, else any ``organism.json`` there; built into the cache once
when missing, about 2 minutes), or with ``--no-build`` and no build a random tiny LLaVA of the
perf-anchors "small" shape (Llama 256 x 4, CLIP 128 x 2, 49 image tokens, 9.2 M parameters). The
JSON lines say which (``model``).

The same rounds time the same requests (the harness's texts and noise images, in its batch order)
through the processor and Hugging Face ``generate`` alone: ``bare_generate_ratio`` is its
speedup. ``--threads`` sets torch's threads (default 1); image preprocessing uses
``$SAFEGAP_PREPROCESS_WORKERS`` threads (default: the cores), reported as ``preprocess_workers``.
``--device``/``--dtype`` as every benchmark (``benchcommon.py``).

Prints two JSON lines: ``eval_batch_speedup`` (wall time, the samples-per-second ratio; the
CPU-time ratio beside) and ``eval_harness_overhead`` (harness / bare at batch 16, median of
per-round ratios, target <= 1.05; process CPU time of all threads on CPU, as the extra work the
harness does, since wall time on a loaded 2-core machine swings by 30 % between rounds; wall beside).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchcommon import add_device_args, machine, resolve, sync  # noqa: E402

from safegap.eval.runner import EvalConfig, run_eval  # noqa: E402
from safegap.models import VLM, load_vlm  # noqa: E402
from safegap.models.preprocess import default_workers  # noqa: E402
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


def build_small_llava(out_dir: Path) -> Path:
    """A LLaVA of the organism's size class (4 layers, 256 wide), random weights of seed 0."""
    text = dict(
        vocab_size=8000,
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=64,
        max_position_embeddings=512,
    )
    vision = dict(hidden_size=128, intermediate_size=512, num_attention_heads=4, projection_dim=128)
    return build_family(llava_family(image_size=224, patch=32, vision=vision, text=text), out_dir)


def find_organism(explicit: str | None) -> Path | None:
    for candidate in (explicit, os.environ.get("SAFEGAP_ORGANISM")):
        if candidate:
            path = Path(candidate)
            if not (path / "config.json").is_file():
                raise SystemExit(f"error: no checkpoint at {path}")
            return path
    try:
        from safegap.organism.build import default_cache_dir
        from safegap.organism.config import OrganismConfig
    except ImportError:
        return None
    root = default_cache_dir()
    current = root / f"plain-seed0-{OrganismConfig().digest()}"
    if (current / "organism.json").is_file():
        return current
    builds = sorted(p.parent for p in root.rglob("organism.json")) if root.is_dir() else []
    return builds[0] if builds else None


def write_prompts(path: Path, n_samples: int) -> None:
    rng = random.Random(0)
    rows = [
        f"p{i},{' '.join(rng.choice(WORDS) for _ in range(rng.randint(2, 14)))}" for i in range(n_samples)
    ]
    path.write_text("id,prompt\n" + "\n".join(rows) + "\n")


def run_arm(vlm: VLM, csv: Path, out: Path, batch_size: int, max_new_tokens: int) -> tuple[float, list[str]]:
    config = EvalConfig(
        model=vlm.name_or_path,
        benchmarks=[f"text_csv:{csv}"],
        out=out,
        conditions=["noise_image"],
        defenses=["none"],
        judges=["refusal"],
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        progress=False,
        n_boot=200,
    )
    start, cpu = time.perf_counter(), time.process_time()
    run_eval(config, vlm=vlm)
    seconds = time.perf_counter() - start
    CPU_SECONDS.append(time.process_time() - cpu)
    generations = [
        json.loads(line)["generation"] for line in (out / "samples.jsonl").read_text().splitlines()
    ]
    return seconds, generations


#: Process CPU seconds (all threads) of each harness run, in call order.
CPU_SECONDS: list[float] = []
BARE_CPU_SECONDS: list[float] = []


def same_requests(csv: Path) -> tuple[list[str], list[Callable[[], Any]]]:
    """The harness's requests for ``csv`` under the ``noise_image`` condition, in its batch order
    (longest prompt first): the texts, and for each a loader of the very image it generates from
    (loading is part of answering a request, so the bare arm does it inside its clock too)."""
    from safegap.data.benchmarks import load_benchmark

    bench = load_benchmark(f"text_csv:{csv}")
    requests = [(s, bench.request(s, "noise_image")) for s in bench.samples()]
    requests.sort(key=lambda sr: -len(sr[1].prompt))  # stable: ties keep sample order
    texts = [r.prompt for _, r in requests]
    loaders = [functools.partial(bench.load_image, r.image, s) for s, r in requests]
    return texts, loaders


def bare_generate_seconds(
    vlm: VLM, texts: list[str], loaders: list[Callable[[], Any]], batch_size: int, max_new_tokens: int
) -> tuple[float, float, list[str]]:
    """The same requests through image loading, the processor and Hugging Face ``generate`` alone
    (no harness): total seconds, seconds spent loading and building inputs, the replies."""
    tok = vlm.tokenizer
    replies: list[str] = []
    preprocess = 0.0
    sync(vlm.device)
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(texts), batch_size):
        t0 = time.perf_counter()
        images = [load() for load in loaders[i : i + batch_size]]
        inputs = vlm.build_inputs(texts[i : i + batch_size], images)
        preprocess += time.perf_counter() - t0
        out = vlm.model.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id
        )
        replies += tok.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    sync(vlm.device)
    BARE_CPU_SECONDS.append(time.process_time() - cpu)
    return time.perf_counter() - start, preprocess, [r.strip() for r in replies]


def ensure_organism(explicit: str | None, build: bool) -> Path | None:
    """The organism checkpoint; built once into the safegap organism cache when missing."""
    found = find_organism(explicit)
    if found is not None or not build:
        return found
    from safegap.organism.build import build_organism, default_cache_dir
    from safegap.organism.config import OrganismConfig

    config = OrganismConfig()
    root = default_cache_dir()
    out = root / f"plain-seed0-{config.digest()}"
    build_organism(out, seed=0, config=config, cache_dir=root)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_device_args(parser)
    parser.add_argument("--model", help="checkpoint to measure (default: the organism, built if missing)")
    parser.add_argument(
        "--no-build", action="store_true", help="do not build the organism; use the tiny LLaVA"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--samples", type=int, default=256)
    args = parser.parse_args()
    device, dtype = resolve(args)
    torch.set_num_threads(args.threads)
    info = machine(device, dtype, args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        organism = ensure_organism(args.model, build=not args.no_build)
        model_path = organism or build_small_llava(root / "model")
        vlm = load_vlm(model_path, dtype=dtype, device=device)
        csv = root / "prompts.csv"
        write_prompts(csv, args.samples)
        texts, images = same_requests(csv)
        run_arm(vlm, csv, root / "warmup", 16, 4)  # warm-up: first-call costs out of the measurement
        bare_generate_seconds(vlm, texts[:16], images[:16], 16, 4)
        times: dict[int, list[float]] = {1: [], 16: []}
        bare: dict[int, list[float]] = {1: [], 16: []}
        cpu: dict[int, list[float]] = {1: [], 16: []}
        bare_cpu: dict[int, list[float]] = {1: [], 16: []}
        preprocess: dict[int, list[float]] = {1: [], 16: []}
        outputs: dict[int, list[str]] = {}
        bare_out: list[str] = []
        for r in range(args.rounds):
            for batch in (1, 16) if r % 2 == 0 else (16, 1):
                seconds, generations = run_arm(vlm, csv, root / f"b{batch}-r{r}", batch, args.max_new_tokens)
                times[batch].append(seconds)
                cpu[batch].append(CPU_SECONDS[-1])
                outputs[batch] = generations
                total, pre, bare_out = bare_generate_seconds(vlm, texts, images, batch, args.max_new_tokens)
                bare[batch].append(total)
                bare_cpu[batch].append(BARE_CPU_SECONDS[-1])
                preprocess[batch].append(pre)
        rate = {b: args.samples / statistics.median(t) for b, t in times.items()}
        # Paired per round (both arms ran back to back): drifts of a shared machine cancel.
        paired = [t1 / t16 for t1, t16 in zip(times[1], times[16], strict=True)]
        bare_ratio = statistics.median(b1 / b16 for b1, b16 in zip(bare[1], bare[16], strict=True))
        # Amdahl: batching cannot beat the time batch 16 still spends preparing its inputs
        ceiling = statistics.median(b1 / p16 for b1, p16 in zip(bare[1], preprocess[16], strict=True))
        params = sum(p.numel() for p in vlm.model.parameters())
        model = f"organism:{organism}" if organism else "tiny-llava-256x4 (random, perf-anchors small shape)"
        result: dict[str, Any] = {
            "benchmark": "eval_batch_speedup",
            "ratio": round(statistics.median(paired), 3),
            "ratio_per_round": [round(r, 3) for r in paired],
            "ratio_basis": "wall seconds batch 1 / batch 16 (samples per second), same round",
            "cpu_ratio": round(statistics.median(a / b for a, b in zip(cpu[1], cpu[16], strict=True)), 3),
            "target": 3.5,
            "better": "higher",
            "model": model,
            "parameters": params,
            "samples": args.samples,
            "max_new_tokens": args.max_new_tokens,
            "batch1_samples_per_s": round(rate[1], 3),
            "batch16_samples_per_s": round(rate[16], 3),
            "batch1_seconds": [round(t, 3) for t in times[1]],
            "batch16_seconds": [round(t, 3) for t in times[16]],
            "bare_generate_ratio": round(bare_ratio, 3),
            "preprocess_ceiling": round(ceiling, 3),
            "preprocess_seconds_batch16": round(statistics.median(preprocess[16]), 3),
            "preprocess_seconds_batch1": round(statistics.median(preprocess[1]), 3),
            "outputs_equal": sum(a == b for a, b in zip(outputs[1], outputs[16], strict=True)),
            "rounds": args.rounds,
            "preprocess_workers": default_workers(),
            **info,
        }
        # extra work of the harness: process CPU time (all threads; time-slicing on a shared
        # machine barely moves it), wall time on CUDA; the other clock beside
        wall_overhead = [h / b for h, b in zip(times[16], bare[16], strict=True)]
        cpu_overhead = [h / b for h, b in zip(cpu[16], bare_cpu[16], strict=True)]
        overhead = wall_overhead if device.type == "cuda" else cpu_overhead
        harness: dict[str, Any] = {
            "benchmark": "eval_harness_overhead",
            "ratio": round(statistics.median(overhead), 3),
            "ratio_per_round": [round(r, 3) for r in overhead],
            "target": 1.05,
            "better": "lower",
            "ratio_basis": "harness / (image loading + processor + HF generate), same requests, batch 16; "
            + ("wall time" if device.type == "cuda" else "process CPU time"),
            "wall_ratio": round(statistics.median(wall_overhead), 3),
            "cpu_ratio": round(statistics.median(cpu_overhead), 3),
            "batch1_ratio": round(
                statistics.median(h / b for h, b in zip(times[1], bare[1], strict=True)), 3
            ),
            "replies_equal_bare": sum(
                a == b for a, b in zip(sorted(outputs[16]), sorted(bare_out), strict=True)
            ),
            "model": model,
            "samples": args.samples,
            "rounds": args.rounds,
            **info,
        }
    print(json.dumps(result), flush=True)
    print(json.dumps(harness), flush=True)


if __name__ == "__main__":
    main()
