"""Training-step time with ReGap and with TGA against no regulariser, side by side in one run.

A small LLaVA (the tiny family checkpoint with its language model widened to 256 x 8 layers and
64 image tokens) trains its projector (stage ``projector``, the stage both methods target) on
synthetic rows, batch 8. Each round runs one optimizer step per regulariser on the same batch,
the order rotating between rounds, with the trainer's pieces (``capture_hidden_states``,
``LossContext``, the terms); a step is forward, losses, backward and the AdamW update. The clock
is the thread's CPU time (one torch thread), which shared-machine load barely moves; wall-clock
ratios are printed beside (on CUDA the clock is wall time). Medians over the rounds, a warm-up round
dropped. ``--device``/``--dtype`` as every benchmark (``benchcommon.py``).

Prints two JSON lines:

* ``regap_step_overhead``: step time with ReGap (first decoder layer, default options) / without.
  Target 1.10: ReGap only averages states the forward already computed.
* ``tga_step_overhead``: step time with TGA on layers 2-5 / without. Target 1.60: TGA adds one
  no-grad text-only pass of the caption, cut after the deepest guided layer (here the caption is
  about a quarter of the multimodal sequence and the pass stops at 6 of 8 layers), plus hooks.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchcommon import add_device_args, machine, resolve, sync  # noqa: E402

TEXT = "the quick brown fox jumps over the lazy dog a red circle and a blue square on a white table"
WORDS = TEXT.split()


def build_model(root: Path) -> Path:
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    from safegap.testing import LLAVA_TEMPLATE, build_tiny

    tiny = build_tiny("llava", root / "tiny")
    config = LlavaConfig.from_pretrained(tiny)
    text = config.text_config
    text.hidden_size, text.intermediate_size, text.num_hidden_layers = 256, 688, 8
    text.num_attention_heads, text.num_key_value_heads, text.head_dim = 8, 4, 32
    config.vision_config.image_size = 64
    config.image_seq_length = 64
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    out = root / "bench_model"
    model.save_pretrained(out)
    processor = LlavaProcessor.from_pretrained(tiny)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    LlavaProcessor(
        image_processor=image_processor, tokenizer=processor.tokenizer, patch_size=8,
        vision_feature_select_strategy="default", num_additional_image_tokens=1, image_token="<image>",
        chat_template=LLAVA_TEMPLATE,
    ).save_pretrained(out)  # fmt: skip
    return out


def build_data(root: Path, rows: int) -> Path:
    from safegap.data.images import noise_image

    (root / "img").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(rows):
        noise_image((64, 64), i).save(root / "img" / f"{i}.png")
        answer = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(24))
        caption = " ".join(WORDS[(2 * i + k) % len(WORDS)] for k in range(16))
        lines.append(
            {
                "image": f"img/{i}.png",
                "conversations": [
                    {"from": "human", "value": "<image>\ndescribe the image"},
                    {"from": "gpt", "value": answer},
                ],
                "caption": caption,
            }
        )
    path = root / "train.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    return path


def run_steps(
    model_dir: Path, data: Path, rounds: int, device: torch.device, dtype: torch.dtype
) -> dict[str, dict[str, list[float]]]:
    """Interleave one optimizer step per regulariser per round on the same batch."""
    from safegap.models import load_vlm
    from safegap.train import LossContext, ReGapLoss, TGALoss, add_extra_losses, capture_hidden_states
    from safegap.train.config import TrainConfig
    from safegap.train.data import AUX_KEYS, IGNORE_INDEX, ConversationEncoder, read_conversations
    from safegap.train.setup import configure_trainable

    vlm = load_vlm(model_dir, dtype=dtype, device=device)
    model = configure_trainable(vlm.model, vlm.adapter, TrainConfig(model="", data="", out=""))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    encoder = ConversationEncoder(vlm.adapter, with_captions=True)
    examples = read_conversations(data)
    batches = [
        {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in b.items()}
        for b in (encoder.collate([encoder.encode(e) for e in examples[i : i + 8]]) for i in range(0, 32, 8))
    ]
    terms = {"none": [], "regap": [ReGapLoss(warmup_steps=1)], "tga": [TGALoss(layers=(2, 3, 4, 5))]}
    times: dict[str, dict[str, list[float]]] = {k: {"cpu": [], "wall": [], "caption": []} for k in terms}
    order = list(terms)
    for r in range(rounds + 1):
        batch = batches[r % len(batches)]
        inputs = {k: v for k, v in batch.items() if k not in AUX_KEYS}
        for reg in order[r % 3 :] + order[: r % 3]:  # rotate who goes first
            sync(device)
            cpu, wall = time.thread_time(), time.perf_counter()
            with capture_hidden_states(vlm.adapter.decoder_layers) as cap:
                logits = model(**inputs, use_cache=False).logits[:, :-1]
            lm = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]),
                batch["labels"][:, 1:].reshape(-1),
                ignore_index=IGNORE_INDEX,
            )
            ctx = LossContext.from_capture(model, batch, cap, vlm.adapter, step=r, lm_loss=lm)
            loss = add_extra_losses(ctx, terms[reg])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if r == 0:
                continue  # warm-up round
            sync(device)
            times[reg]["cpu"].append(time.thread_time() - cpu)
            times[reg]["wall"].append(time.perf_counter() - wall)
            times[reg]["caption"].append(ctx.extras.get("tga/caption_ms", 0.0) / 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_device_args(parser)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    device, dtype = resolve(args)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        times = run_steps(build_model(root), build_data(root / "data", 32), args.rounds, device, dtype)
    # the thread's CPU time on CPU (load barely moves it); on CUDA the host waits, so wall time
    clock = "wall" if device.type == "cuda" else "cpu"
    cpu = {k: statistics.median(v[clock]) for k, v in times.items()}
    wall = {k: statistics.median(v["wall"]) for k, v in times.items()}
    details = {
        "model": "llava text 256x8, 64 image tokens, projector stage, batch 8, 1 thread",
        "rounds": args.rounds,
        "clock": "thread CPU time (wall-clock ratios beside)" if clock == "cpu" else "wall time",
        "step_ms_none": round(cpu["none"] * 1000, 2),
    }
    for name, reg, target, extra in (
        ("regap_step_overhead", "regap", 1.10, {}),
        (
            "tga_step_overhead",
            "tga",
            1.60,
            {
                "layers": "2-5",
                "caption_pass_wall_ms": round(statistics.median(times["tga"]["caption"]) * 1000, 2),
            },
        ),
    ):
        record = {
            "benchmark": name,
            "ratio": round(cpu[reg] / cpu["none"], 4),
            "target": target,
            "wall_ratio": round(wall[reg] / wall["none"], 4),
            f"step_ms_{reg}": round(cpu[reg] * 1000, 2),
            **extra,
            **details,
            **machine(device, dtype, 1),
        }
        print(json.dumps(record))


if __name__ == "__main__":
    main()
