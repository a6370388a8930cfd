"""Evaluation throughput: the harness at batch 16 vs a batch-1 loop, side by side in one process.

Both arms run the real harness (``safegap.eval.runner.run_eval``: images, left-padded batched
greedy generation, the refusal judge, fsync'ed JSONL writes, the summary) on the same requests
(``--samples``, default 64: four batches, so the steady state of a run and not one batch's fixed
costs; 2-14 words of text each, one noise image each), at most 32 new tokens, in interleaved
rounds. The ratio is batch-1 seconds over batch-16 seconds within a round (= samples per second at
batch 16 over samples per second at batch 1), median over rounds; pairing by round cancels the
drifts of a shared machine. Target >= 5, the speedup ``/work/shared/research/perf-anchors.md``
measured for bare ``generate`` on the small model.

Model: the organism when a build is available (``--model PATH``, ``$SAFEGAP_ORGANISM``, the
current configuration's seed-0 build in the safegap organism cache, else any ``organism.json``
there), otherwise a random tiny LLaVA of the perf-anchors "small" shape: Llama 256 hidden x 4
layers (MLP 1024, vocabulary 8000; the BPE tokenizer has 512 tokens), CLIP 128 x 2 layers at
224 px / patch 32 = 49 image tokens (9.2 M parameters). The JSON line says which (``model``).

For reference the same rounds also time bare ``generate`` (no harness) at both batch sizes:
``bare_generate_ratio`` is its speedup, ``harness_overhead_batch16`` the harness's time at batch 16
over bare generate's. On a loaded machine both ratios drop together. ``--threads`` sets torch's
threads (default 1); image preprocessing uses ``$SAFEGAP_PREPROCESS_WORKERS`` threads (default:
the cores), reported as ``preprocess_workers``.

Prints one JSON line: ``{"benchmark": "eval_batch_speedup", "ratio", "target", ...}``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from safegap.eval.runner import EvalConfig, run_eval  # noqa: E402
from safegap.models import VLM, load_vlm  # noqa: E402
from safegap.models.preprocess import default_workers  # noqa: E402
from safegap.models.tiny import LLAVA_TEMPLATE, train_tokenizer  # noqa: E402

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
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tok = train_tokenizer(["<image>"])
    vision = CLIPVisionConfig(
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=224,
        patch_size=32,
        projection_dim=128,
    )
    text = LlamaConfig(
        vocab_size=8000,
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=64,
        max_position_embeddings=512,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_seq_length=49,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}
        ),
        tokenizer=tok,
        patch_size=32,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        image_token="<image>",
        chat_template=LLAVA_TEMPLATE,
    )
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


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
    start = time.perf_counter()
    run_eval(config, vlm=vlm)
    seconds = time.perf_counter() - start
    generations = [
        json.loads(line)["generation"] for line in (out / "samples.jsonl").read_text().splitlines()
    ]
    return seconds, generations


def bare_generate_seconds(vlm: VLM, csv: Path, batch_size: int, max_new_tokens: int) -> float:
    """The same requests through ``safegap.models.generation.generate`` alone (no harness)."""
    from safegap.data.images import noise_image
    from safegap.models.generation import generate

    texts = [line.split(",", 1)[1] for line in csv.read_text().splitlines()[1:]]
    images = [noise_image(seed=i) for i in range(len(texts))]
    start = time.perf_counter()
    generate(vlm, texts, images, max_new_tokens=max_new_tokens, batch_size=batch_size)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint to measure (default: organism if built, else tiny LLaVA)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--samples", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        organism = find_organism(args.model)
        model_path = organism or build_small_llava(root / "model")
        vlm = load_vlm(model_path)
        csv = root / "prompts.csv"
        write_prompts(csv, args.samples)
        run_arm(vlm, csv, root / "warmup", 16, 4)  # warm-up: first-call costs out of the measurement
        times: dict[int, list[float]] = {1: [], 16: []}
        bare: dict[int, list[float]] = {1: [], 16: []}
        outputs: dict[int, list[str]] = {}
        for r in range(args.rounds):
            for batch in (1, 16) if r % 2 == 0 else (16, 1):
                seconds, generations = run_arm(vlm, csv, root / f"b{batch}-r{r}", batch, args.max_new_tokens)
                times[batch].append(seconds)
                outputs[batch] = generations
                bare[batch].append(bare_generate_seconds(vlm, csv, batch, args.max_new_tokens))
        rate = {b: args.samples / statistics.median(t) for b, t in times.items()}
        # Paired per round (both arms ran back to back): drifts of a shared machine cancel.
        paired = [t1 / t16 for t1, t16 in zip(times[1], times[16], strict=True)]
        bare_ratio = statistics.median(b1 / b16 for b1, b16 in zip(bare[1], bare[16], strict=True))
        params = sum(p.numel() for p in vlm.model.parameters())
        result: dict[str, Any] = {
            "benchmark": "eval_batch_speedup",
            "ratio": round(statistics.median(paired), 3),
            "ratio_per_round": [round(r, 3) for r in paired],
            "target": 5.0,
            "higher_is_better": True,
            "model": f"organism:{organism}"
            if organism
            else "tiny-llava-256x4 (random, perf-anchors small shape)",
            "parameters": params,
            "samples": args.samples,
            "max_new_tokens": args.max_new_tokens,
            "batch1_samples_per_s": round(rate[1], 3),
            "batch16_samples_per_s": round(rate[16], 3),
            "batch1_seconds": [round(t, 3) for t in times[1]],
            "batch16_seconds": [round(t, 3) for t in times[16]],
            "bare_generate_ratio": round(bare_ratio, 3),
            "harness_overhead_batch16": round(statistics.median(times[16]) / statistics.median(bare[16]), 3),
            "outputs_equal": sum(a == b for a, b in zip(outputs[1], outputs[16], strict=True)),
            "rounds": args.rounds,
            "threads": args.threads,
            "preprocess_workers": default_workers(),
            "device": str(vlm.device),
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
